"""The composition root: the ``mailhost`` command that builds settings and wires the edges."""
