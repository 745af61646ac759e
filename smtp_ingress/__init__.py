"""SMTP ingress: the MX for every hosted domain (aiosmtpd protocol + Mailhost policy)."""

from smtp_ingress.server import SmtpIngress

__all__ = ["SmtpIngress"]
