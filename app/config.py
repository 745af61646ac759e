"""The one settings class, built at the entry point and passed down (never a module global)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_hostname() -> str:
    """This host's FQDN; when the resolver only knows it as ``localhost`` (common on VMs and
    containers), the kernel's host name, so Maildir file names still differ between hosts."""
    fqdn = socket.getfqdn()
    if fqdn == "localhost" or fqdn.startswith("localhost."):
        return socket.gethostname() or fqdn
    return fqdn


class Settings(BaseSettings):
    """Every knob of Mailhost. Environment variables use the prefix ``MAILHOST_``."""

    model_config = SettingsConfigDict(
        env_prefix="MAILHOST_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- storage -----------------------------------------------------------------------------
    database_url: str = "sqlite:///./var/mailhost.db"
    maildir_root: Path = Path("./var/mail")
    hostname: str = Field(default_factory=lambda: default_hostname())
    # The host name customers publish as their MX (shown in the portal's DNS panel).
    mx_hostname: str = "mx.mailhost.example"

    # --- TLS (SMTP STARTTLS, POP3 STLS and implicit TLS) -------------------------------------
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # --- SMTP ingress ------------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_workers: int = 1
    smtp_max_message_size: int = 50 * 1024 * 1024
    smtp_max_recipients: int = 100
    smtp_max_connections: int = 1000
    smtp_max_connections_per_ip: int = 50
    smtp_idle_timeout: float = 300.0
    smtp_data_timeout: float = 600.0
    smtp_max_junk_commands: int = 20
    # A client that talks before the greeting is an early talker (spamware): wait this long
    # before greeting and refuse the session if anything arrived meanwhile.
    smtp_greet_delay: float = 0.3
    # How long a recipient lookup is reused across transactions (a suspension or a new alias
    # takes at most this long to take effect).
    smtp_resolution_cache_seconds: float = 2.0
    # The platform postmaster: a hosted address (mailbox or alias) that receives mail for the
    # bare <Postmaster> and for postmaster@ of a domain with no mailbox of its own to take it
    # (RFC 5321 section 4.5.1). Set it in production; unset, those get 550 5.1.1.
    postmaster_address: str | None = None

    # --- POP3 --------------------------------------------------------------------------------
    pop3_host: str = "127.0.0.1"
    pop3_port: int = 1110
    pop3s_port: int | None = None
    pop3_workers: int = 1
    pop3_idle_timeout: float = 600.0
    pop3_require_tls: bool = False
    pop3_max_unknown_commands: int = 10
    # Per worker process: refused with "-ERR [SYS/TEMP]" in place of the greeting.
    pop3_max_connections: int = 1000
    pop3_max_connections_per_ip: int = 20

    # --- portal / API ------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    web_workers: int = 1
    session_max_age: int = 8 * 3600
    # Set true behind HTTPS so the session cookie gets the Secure flag.
    cookie_secure: bool = False

    # --- login throttle (every password door: POP3, SMTP AUTH, portal; app/services/throttle)
    # Attempts a client network (an IPv4 address, an IPv6 /64) may have failed or in flight;
    # one comes back every refill period. Over budget, a login is refused at once.
    login_address_budget: int = 10
    login_address_refill_seconds: float = 60.0
    # The same per account; a network that logged in to the account before is exempt.
    login_account_budget: int = 30
    login_account_refill_seconds: float = 120.0
    login_known_address_days: int = 30

    log_level: str = "INFO"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
