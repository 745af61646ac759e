"""The web edge: the operator portal (HTML) and the JSON API, composed by ``web.app``."""
