"""Inbound and outbound content scanning: rspamd and clamd clients, verdicts, result headers.

Theory of operation: ``Scanner.scan`` sends the message to rspamd (``POST /checkv2``, with the
SMTP envelope as request headers) and to clamd (``INSTREAM``) at the same time, under one
deadline, and ``decide`` turns their answers and the recipient domain's ``ScanPolicy`` into a
``Decision``; ``headers`` builds what a stored copy gets (Authentication-Results, X-Spam-*,
the subject tag) and removes forged Authentication-Results. The edges call ``Scanner`` and map
a ``Decision`` to their replies; nothing here knows SMTP reply codes.
"""
