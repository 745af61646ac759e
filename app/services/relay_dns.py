"""What the customer of a relay domain publishes in DNS: MX to us, or as backup MX only.

Two roles (the customer chooses; Mailhost behaves the same in both):

* **primary MX**: our MX host is the domain's only MX (preference 10); all mail reaches us
  and we forward it to the next hop;
* **backup MX**: the customer's own server keeps the preferred MX (10: the LOWER preference
  number wins, RFC 5321 section 5.1) and ours is published with a higher number (20), so
  senders come to us only while the customer's server cannot be reached; we queue and hand
  the mail over when it is back.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import ValidationError
from app.services.dkim import DnsPolicy, DnsRecord
from app.services.relay_hop import HOP_HOST, parse_next_hop

PRIMARY_PREFERENCE = 10
BACKUP_PREFERENCE = 20
# Shown where we cannot know the customer's server's host name (a next hop given as an
# address, or as "the MX of a named host").
YOUR_SERVER = "your-mail-server.example."


@dataclass(frozen=True, slots=True)
class RelayMxOptions:
    primary: list[DnsRecord]
    backup: list[DnsRecord]
    own_server_known: bool  # the backup records name the customer's server from the next hop


def _mx(name: str, preference: int, host: str, note: str, purpose: str) -> DnsRecord:
    value = f"{preference} {host}"
    return DnsRecord(purpose, "MX", name, value, value, note)


def mx_options(*, domain_name: str, next_hop: str, policy: DnsPolicy) -> RelayMxOptions:
    """The MX records of both roles for ``domain_name`` (IDNA), given its next hop."""
    fqdn = f"{domain_name}."
    ours = f"{policy.mx_hostname.rstrip('.')}."
    own = YOUR_SERVER
    try:
        hop = parse_next_hop(next_hop)
    except ValidationError:
        hop = None
    known = hop is not None and hop.kind == HOP_HOST and not hop.is_address
    if known and hop is not None:
        own = f"{hop.host}."
    primary = [
        _mx(fqdn, PRIMARY_PREFERENCE, ours, "our MX, the only one: all mail comes to us", "mx")
    ]
    backup = [
        _mx(
            fqdn,
            PRIMARY_PREFERENCE,
            own,
            "the customer's own server: preferred (lower number)",
            "mx-own",
        ),
        _mx(
            fqdn,
            BACKUP_PREFERENCE,
            ours,
            "our MX as backup: used only while the customer's server is unreachable",
            "mx-backup",
        ),
    ]
    return RelayMxOptions(primary=primary, backup=backup, own_server_known=known)
