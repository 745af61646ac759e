"""The one settings class, built at the entry point and passed down (never a module global)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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
    # --- DNS records recommended to hosted domains (portal DNS panel, `domain dkim show`) ----
    # A domain whose SPF record lists the ISP's outbound hosts (e.g. "_spf.isp.example"):
    # hosted domains are told to publish "v=spf1 mx include:<it> -all". Unset: "v=spf1 mx -all".
    spf_include: str | None = None
    # Where DMARC aggregate reports go (rua=mailto:...). Outside the customer's own domain the
    # report domain must authorise it (RFC 7489 section 7.1: *._report._dmarc.<its domain>).
    dmarc_report_address: str | None = None
    # The DMARC policy recommended: "none" (monitor only) until reports show that all the
    # domain's mail is signed, then "quarantine" or "reject".
    dmarc_policy: Literal["none", "quarantine", "reject"] = "none"

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
    # The event loop of every server process (app/event_loop.py): "auto" is uvloop when it
    # can be imported, else asyncio's own; "uvloop" insists; "asyncio" for comparison/debugging.
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    smtp_max_junk_commands: int = 20
    # NOOP, RSET and VRFY without a delivered message in between: a limit of their own, high
    # enough for big senders that RSET between many transactions (Postfix's
    # smtpd_junk_command_limit is 100 and counts exactly these); a delivered message resets it.
    smtp_max_noop_commands: int = 100
    # A client that talks before the greeting is an early talker (spamware): wait this long
    # before greeting and refuse the session if anything arrived meanwhile.
    smtp_greet_delay: float = 0.3
    # How long a recipient lookup is reused across transactions (a suspension or a new alias
    # takes at most this long to take effect).
    smtp_resolution_cache_seconds: float = 2.0
    # A bare LF in message content (RFC 5321 section 2.3.8): "reject" refuses the message
    # (554 5.5.2, safe against SMTP smuggling); "normalize" is Postfix 3.9's
    # smtpd_forbid_bare_newline=normalize: only CRLF.CRLF ends DATA, and a bare LF inside the
    # content ends a line as CRLF would (for sloppy senders). A bare CR is refused either way.
    smtp_bare_lf: Literal["reject", "normalize"] = "reject"
    # The platform postmaster: a hosted address (mailbox or alias) that receives mail for the
    # bare <Postmaster> and for postmaster@ of a domain with no mailbox of its own to take it
    # (RFC 5321 section 4.5.1). Set it in production; unset, those get 550 5.1.1.
    postmaster_address: str | None = None

    # --- content scanning (app/scanning; README "Scanning") ---------------------------------
    # rspamd's normal worker ("127.0.0.1:11333") and clamd's TCP socket ("127.0.0.1:3310");
    # with neither set, scanning is off and the ingress warns at start.
    scan_rspamd_address: str | None = None
    scan_clamd_address: str | None = None
    # Both scanners must answer within this many seconds, else 451 4.7.1 (or, with
    # scan_accept_unscanned, the message is stored tagged "unscanned").
    scan_timeout: float = Field(default=30.0, gt=0)
    scan_accept_unscanned: bool = False
    # Larger messages are stored unscanned (tagged), as rspamd's and clamd's own limits would
    # refuse them; keep it at or below clamd's StreamMaxLength.
    scan_max_size: int = Field(default=25 * 1024 * 1024, ge=1)
    # Platform defaults of the per-domain policy (overridable per customer and per domain).
    scan_reject_score: float = 15.0
    scan_tag_score: float = 6.0
    scan_subject_tag: str = "[SPAM]"
    scan_greylisting: bool = False
    # The authserv-id of our Authentication-Results fields (RFC 8601 section 2.5); default: the
    # host name.
    authserv_id: str | None = None

    # --- SMTP submission (RFC 6409 / RFC 8314; 587 and 465 in production) --------------------
    # STARTTLS port (AUTH only after STARTTLS) and implicit-TLS port (None: off). Both need a
    # certificate (tls_cert_file/tls_key_file); `mailhost serve` makes a development one.
    submission_host: str = "127.0.0.1"
    submission_port: int = 2587
    submissions_port: int | None = 2465
    submission_workers: int = 1
    # Open connections per submission process, in all and per client address (a client past
    # them gets 421 4.7.0 at connect); one address behind a company NAT may hold many.
    submission_max_connections: int = 1000
    submission_max_connections_per_ip: int = 20

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
    # "auto": a lock that dies with its process (PostgreSQL advisory lock, or a file lock on
    # SQLite); "lease": expiring lease rows only (PostgreSQL behind a transaction pooler).
    pop3_maildrop_lock: Literal["auto", "lease"] = "auto"

    # --- portal / API ------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = 8000
    web_workers: int = 1
    session_max_age: int = 8 * 3600
    # Set true behind HTTPS so the session cookie gets the Secure flag.
    cookie_secure: bool = False
    # Two-factor login (TOTP) required for admin operators and customer administrators: one
    # without it is sent to enrolment after the password and can open no other page.
    totp_required_for_admins: bool = False
    # Request bodies larger than this are refused with 413 before they are read. JSON and
    # portal forms need kilobytes; the largest valid API body (an alias with 1000 targets of
    # 320 characters) is about 330 KB.
    web_max_body_bytes: int = 512 * 1024
    # The CSV import (a file of up to 5 MiB, re-posted percent-encoded on confirmation).
    web_max_upload_bytes: int = 16 * 1024 * 1024

    # The server secret that keys the Idempotency-Key request fingerprints (and any future MAC).
    # It must be the same on every worker and host; unset, it is read from ``secret_key_file``,
    # generated there at first start (default: a file in the Maildir root, which every host
    # shares). See ``app.secret_key``.
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None

    # --- outbound queue and delivery agent ----------------------------------------------------
    # The spool holds each queued message once (next to maildir_root on the mail volume).
    spool_root: Path = Path("./var/spool")
    # Port the delivery agent connects to on remote MX hosts (25 in production; tests use sinks).
    delivery_port: int = 25
    # Resolver for MX/A/AAAA lookups: empty = the system resolver (/etc/resolv.conf).
    delivery_nameservers: tuple[str, ...] = ()
    delivery_dns_port: int = 53
    delivery_dns_timeout: float = 10.0
    # Connections at once, in all, and to one destination domain.
    delivery_concurrency: int = 20
    delivery_destination_concurrency: int = 5
    # Queue rows one worker claims per round, and how long its claim lasts before another
    # worker may take them (a killed worker's rows are retried after this).
    delivery_batch_size: int = 500
    delivery_lease_seconds: float = 600.0
    delivery_poll_interval: float = 1.0
    delivery_connect_timeout: float = 30.0
    delivery_command_timeout: float = 300.0
    # Seconds between attempts (the last value repeats), as Postfix and Stalwart do.
    delivery_retry_schedule: tuple[float, ...] = (300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
    # A message still undelivered this long after it was queued is bounced (5 days).
    delivery_max_age: float = 5 * 86400.0
    # Warn the sender once when a message is still undelivered after this long; 0 = never.
    delivery_delay_warning: float = 4 * 3600.0
    # A destination that answered 421/4xx to the greeting or EHLO is left alone this long.
    delivery_destination_backoff: float = 60.0
    # Spool files with no pending queue row are removed after this grace period (a file
    # being enqueued right now is younger than this).
    spool_orphan_grace: float = 3600.0
    # Finished queue rows (delivered/bounced/expired) are kept this long for `queue show`.
    queue_keep_finished: float = 7 * 86400.0

    # --- relay domains (issue 12; app/services/relay.py) ----------------------------------------
    # Addresses this platform's MX answers on (besides smtp_host): a relay domain's next hop
    # resolving to one of them (on the MX port or 25) is refused as a mail loop.
    relay_own_addresses: tuple[str, ...] = ()
    # Seconds a recipient callout (mode "verify") may take before the sender gets 451 4.4.1.
    relay_callout_timeout: float = 10.0

    # --- login throttle (every password door: POP3, SMTP AUTH, portal; app/services/throttle)
    # Attempts a client network (an IPv4 address, an IPv6 /64) may have failed or in flight;
    # one comes back every refill period. Over budget, a login is refused at once.
    login_address_budget: int = 10
    login_address_refill_seconds: float = 60.0
    # The same per account; a network that logged in to the account before is exempt.
    login_account_budget: int = 30
    login_account_refill_seconds: float = 120.0
    login_known_address_days: int = 30

    # --- sending limits (submission; app/services/sending.py) -----------------------------
    # Platform defaults for a mailbox or customer whose own limit is unset. Fixed windows: the
    # UTC clock hour for messages, the UTC day for recipients (every recipient counts, hosted
    # or remote). A customer's limits cover all its mailboxes together.
    send_mailbox_messages_per_hour: int = Field(default=200, ge=1)
    send_mailbox_recipients_per_day: int = Field(default=1000, ge=1)
    send_customer_messages_per_hour: int = Field(default=2000, ge=1)
    send_customer_recipients_per_day: int = Field(default=10000, ge=1)

    # --- message tracking (app/tracking.py) ----------------------------------------------
    # Every edge records its message events (no bodies, no passwords) through a bounded
    # buffer written in batches by a background thread; full, events are dropped and counted
    # (the mail is never held up for them).
    tracking_enabled: bool = True
    tracking_retention_days: int = Field(default=30, ge=1)
    tracking_buffer_events: int = Field(default=50_000, ge=1)
    tracking_batch_size: int = Field(default=500, ge=1)
    tracking_flush_seconds: float = Field(default=0.5, gt=0)
    # How often the periodic jobs prune events past the retention (seconds).
    tracking_prune_interval_seconds: float = Field(default=3600.0, gt=0)
    # The outbound queue's depth and oldest age are sampled this often (seconds) for the
    # dashboard's 48-hour queue chart (app/periodic.py; kept as long as tracking events).
    queue_sample_seconds: float = Field(default=300.0, gt=0)
    # --- mailbox self-service (/me), forwarding and auto-replies (app/delivery_rules.py) ----
    # An auto-reply answers one sender at most once per this many days (RFC 3834 section 2).
    autoreply_interval_days: int = Field(default=7, ge=1)
    # Secret for SRS addresses of remote forwards; unset: derived from the server secret.
    srs_secret: SecretStr | None = None
    # --- monitoring (app/metrics.py; README "Monitoring") ------------------------------------
    # Each service's own metrics listener (Prometheus text format at /metrics, plus /livez and
    # /readyz); unset = none. 0 picks a free port (named metrics= in the ready line). Give each
    # service started on its own (`mailhost smtp`, `mailhost pop3`, ...) a port of its own.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # prometheus-client's multiprocess files, one subdirectory per service, emptied at start.
    metrics_dir: Path = Path("./var/metrics")
    # The portal's /metrics answers only with "Authorization: Bearer <this>"; unset = 404.
    metrics_token: SecretStr | None = None
    # Quota warnings (app/quota_warnings.py): one message per threshold crossed on the way up.
    quota_warning_thresholds: tuple[int, ...] = (80, 90, 100)
    quota_warning_from: str = "postmaster@{hostname}"
    quota_warning_subject: str = "Your mailbox is {percent}% full"
    quota_warning_text: str = (
        "Your mailbox {address} uses {used} of its {quota} quota ({percent}%). When it is "
        "full, new mail to it is refused: please delete messages you no longer need."
    )

    log_level: str = "INFO"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
