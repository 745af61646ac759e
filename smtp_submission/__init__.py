"""The submission edge: authenticated SMTP for hosted users on 587 (STARTTLS) and 465 (TLS)."""
