"""Header work for scanned mail: the header section, forged Authentication-Results, the
results we add (RFC 8601), X-Spam-* and the subject tag. Pure functions over bytes (LF line
endings, as the ingress stores messages)."""

from __future__ import annotations

import re

from app.scanning.clients import RspamdResult

# rspamd symbols -> RFC 8601 result values (section 2.7: the registered results per method).
_SPF = {
    "R_SPF_ALLOW": "pass",
    "R_SPF_FAIL": "fail",
    "R_SPF_SOFTFAIL": "softfail",
    "R_SPF_NEUTRAL": "neutral",
    "R_SPF_NA": "none",
    "R_SPF_DNSFAIL": "temperror",
    "R_SPF_PERMFAIL": "permerror",
}
_DKIM = {
    "R_DKIM_ALLOW": "pass",
    "R_DKIM_REJECT": "fail",
    "R_DKIM_TEMPFAIL": "temperror",
    "R_DKIM_PERMFAIL": "permerror",
    "R_DKIM_NA": "none",
}
_DMARC = {
    "DMARC_POLICY_ALLOW": "pass",
    "DMARC_POLICY_ALLOW_WITH_FAILURES": "pass",
    "DMARC_POLICY_REJECT": "fail",
    "DMARC_POLICY_QUARANTINE": "fail",
    "DMARC_POLICY_SOFTFAIL": "fail",
    "DMARC_NA": "none",
    "DMARC_DNSFAIL": "temperror",
    "DMARC_BAD_POLICY": "permerror",
}
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.ASCII)
_COMMENT = re.compile(r"\([^()]*\)")


def split_head(content: bytes) -> bytes:
    """The header section of ``content`` up to and including the LF of its last field (the
    blank line and body excluded); the whole content when it has no body separator, and b""
    when it does not start with a header field (then nothing is rewritten)."""
    if not _FIELD_NAME.match(content):
        return b""
    end = content.find(b"\n\n")
    return content if end < 0 else content[: end + 1]


def _fields(head: bytes) -> list[bytes]:
    """Header fields with their continuation lines, each ending in LF."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def _name(field: bytes) -> bytes:
    match = _FIELD_NAME.match(field)
    return match.group(1).lower() if match else b""


def authserv_id_of(field: bytes) -> str:
    """The authserv-id of an Authentication-Results field (RFC 8601 section 2.2), lower-cased,
    comments (CFWS) and an optional version number removed."""
    value = field.split(b":", 1)[1].decode("utf-8", "replace")
    value = _COMMENT.sub(" ", " ".join(value.split()))
    first = value.split(";", 1)[0].split()
    return first[0].lower() if first else ""


def strip_forged(head: bytes, authserv_id: str) -> tuple[bytes, int]:
    """Remove every Authentication-Results field carrying our authserv-id (RFC 8601 section
    5: a receiver MUST remove or rename such fields that arrive from outside). Returns the
    new header section and how many fields were removed."""
    ours = authserv_id.lower()
    kept: list[bytes] = []
    removed = 0
    for field in _fields(head):
        if _name(field) == b"authentication-results" and authserv_id_of(field) == ours:
            removed += 1
        else:
            kept.append(field)
    return b"".join(kept), removed


def tag_subject(head: bytes, tag: str) -> bytes:
    """Prefix the Subject with ``tag`` (once); a message without one gets ``Subject: tag``."""
    encoded = tag.encode("utf-8")
    out: list[bytes] = []
    found = False
    for field in _fields(head):
        if not found and _name(field) == b"subject":
            found = True
            name, value = field.split(b":", 1)
            if not value.lstrip().startswith(encoded):
                field = name + b": " + encoded + b" " + value.lstrip(b" \t")
        out.append(field)
    if not found:
        out.append(b"Subject: " + encoded + b"\n")
    return b"".join(out)


def _method(table: dict[str, str], result: RspamdResult) -> str | None:
    for symbol, value in table.items():
        if symbol in result.symbols:
            return value
    return None


def _property_value(text: str) -> str:
    # RFC 8601 pvalue: a value or an address; keep it to safe printable octets.
    return "".join(ch for ch in text if ch.isascii() and ch.isprintable() and ch not in ' ;()"\\')


def authentication_results(
    authserv_id: str,
    result: RspamdResult | None,
    *,
    sender: str,
    helo: str | None,
    from_domain: str | None,
) -> bytes:
    """The ``Authentication-Results:`` field for a stored copy (RFC 8601 section 2.2); with no
    scan result (unscanned mail) it says ``none`` (section 2.2: no method was applied)."""
    if result is None:
        return f"Authentication-Results: {authserv_id}; none\n".encode()
    parts: list[str] = []
    spf = _method(_SPF, result)
    if spf:
        identity = f"smtp.mailfrom={_property_value(sender)}" if sender else ""
        if not identity and helo:
            identity = f"smtp.helo={_property_value(helo)}"
        parts.append(f"spf={spf} {identity}".rstrip())
    dkim = _method(_DKIM, result)
    if dkim:
        domains = [
            option.split(":", 1)[0]
            for symbol in ("R_DKIM_ALLOW", "R_DKIM_REJECT", "R_DKIM_TEMPFAIL", "R_DKIM_PERMFAIL")
            for option in result.symbols.get(symbol, (0.0, ()))[1]
        ]
        suffix = f" header.d={_property_value(domains[0])}" if domains else ""
        parts.append(f"dkim={dkim}{suffix}")
    dmarc = _method(_DMARC, result)
    if dmarc:
        suffix = f" header.from={_property_value(from_domain)}" if from_domain else ""
        parts.append(f"dmarc={dmarc}{suffix}")
    if not parts:
        return f"Authentication-Results: {authserv_id}; none\n".encode()
    return (
        "Authentication-Results: " + authserv_id + ";\n\t" + ";\n\t".join(parts) + "\n"
    ).encode()


def from_domain(head: bytes) -> str | None:
    """The domain of the first address in the From field (DMARC's RFC5322.From domain)."""
    for field in _fields(head):
        if _name(field) == b"from":
            value = field.split(b":", 1)[1].decode("utf-8", "replace")
            match = re.search(r"@([A-Za-z0-9.-]+)", value)
            return match.group(1).lower().rstrip(".") if match else None
    return None


def spam_headers(*, score: float, threshold: float, spam: bool, symbols: list[str]) -> bytes:
    """X-Spam-Status / X-Spam-Score as SpamAssassin writes them (what mail clients filter on)."""
    flag = "Yes" if spam else "No"
    tests = ",".join(symbols)
    return (
        f"X-Spam-Status: {flag}, score={score:.1f} required={threshold:.1f}"
        + (f"\n\ttests={tests}" if tests else "")
        + f"\nX-Spam-Score: {score:.1f}\n"
    ).encode()
