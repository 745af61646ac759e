"""The domain page's DNS panel: the DKIM record scraped from the HTML, published in the real
test DNS server, verifies a signature made with the domain's key; generate / rotate / retire
forms (admins only, CSRF), SPF and DMARC recommendations."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import dkim
from app.db import transaction
from app.models import DkimKey
from app.services import dkim as dkim_service
from tests.dkim_helpers import signature_tags, verify
from tests.dnsserver import TestDNSServer
from tests.factories import make_domain
from tests.web.portal_helpers import (  # noqa: F401
    PortalClient,
    admin,
    anon,
    field_error,
    portal_app,
    support,
)

MESSAGE = b"From: a@hosted.example\r\nTo: b@remote.example\r\nSubject: s\r\n\r\nbody\r\n"
_ROW = re.compile(
    r'<tr class="dns-(?P<purpose>\w+)"><td>(?P<type>\w+)</td>'
    r'<td><code class="record-name">(?P<name>[^<]+)</code></td>'
    r'<td><code class="record-value"[^>]*>(?P<value>[^<]*)</code></td>'
)


def _records(page: str) -> list[tuple[str, str, str, str]]:
    """(purpose, type, name, value) of each row of the DNS panel, as a person reads them."""
    return [
        (m["purpose"], m["type"], html.unescape(m["name"]), html.unescape(m["value"]))
        for m in _ROW.finditer(page)
    ]


def _domain_id(factory: sessionmaker[Session]) -> int:
    with transaction(factory) as s:
        return make_domain(s).id


def _publish_from_page(page: str, server: TestDNSServer) -> list[str]:
    names = []
    for purpose, _, name, value in _records(page):
        if purpose == "dkim":
            server.zone.txt(name, value)
            names.append(name)
    return names


def _signed(factory: sessionmaker[Session]) -> bytes:
    with transaction(factory) as s:
        key = dkim_service.signing_key_for(s, domain="hosted.example")
    assert key is not None
    return dkim.sign_message(MESSAGE, key)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_the_record_shown_verifies_the_signature(
    admin: PortalClient,  # noqa: F811
    session_factory: sessionmaker[Session],
    dns_server: TestDNSServer,
    algorithm: str,
) -> None:
    domain_id = _domain_id(session_factory)
    page = admin.get(f"/domains/{domain_id}").text
    assert "No DKIM key" in page and "Generate signing key" in page
    assert [r[0] for r in _records(page)] == ["mx", "spf", "dmarc"]

    made = admin.post(f"/domains/{domain_id}/dkim", {"selector": "s1", "algorithm": algorithm})
    assert made.status_code == 303, made.text
    page = admin.get(f"/domains/{domain_id}").text
    rows = _records(page)
    assert [r[0] for r in rows] == ["mx", "spf", "dkim", "dmarc"]
    assert rows[1][3] == "v=spf1 mx -all"
    assert rows[3][1:] == ("TXT", "_dmarc.hosted.example.", "v=DMARC1; p=none")
    kind = "rsa" if algorithm == "rsa" else "ed25519"
    assert rows[2][2] == "s1._domainkey.hosted.example."
    assert rows[2][3].startswith(f"v=DKIM1; k={kind}; p=")
    assert "Rotate: new signing key" in page
    assert "PRIVATE KEY" not in page
    assert _publish_from_page(page, dns_server) == ["s1._domainkey.hosted.example."]
    assert verify(_signed(session_factory), dns_server)
    # The zone-file form holds the same data, split into strings of at most 255 characters.
    zone = html.unescape(re.search(r'<pre class="zone"[^>]*>(.*?)</pre>', page, re.S)[1])
    line = next(x for x in zone.splitlines() if x.startswith("s1._domainkey"))
    strings = re.findall(r'"([^"]*)"', line)
    assert "".join(strings) == rows[2][3] and all(len(x) <= 255 for x in strings)


def test_rotate_then_retire(
    admin: PortalClient,  # noqa: F811
    session_factory: sessionmaker[Session],
    dns_server: TestDNSServer,
) -> None:
    domain_id = _domain_id(session_factory)
    admin.post(f"/domains/{domain_id}/dkim", {"selector": "old", "algorithm": "ed25519"})
    assert admin.post(f"/domains/{domain_id}/dkim", {"selector": "new"}).status_code == 303
    page = admin.get(f"/domains/{domain_id}").text
    published = _publish_from_page(page, dns_server)
    assert published == ["new._domainkey.hosted.example.", "old._domainkey.hosted.example."]
    signed = _signed(session_factory)
    assert signature_tags(signed)["s"] == "new"
    assert verify(signed, dns_server)

    assert admin.post(f"/domains/{domain_id}/dkim/retire", {"selector": "old"}).status_code == 303
    page = admin.get(f"/domains/{domain_id}").text
    assert [r[2] for r in _records(page) if r[0] == "dkim"] == ["new._domainkey.hosted.example."]
    keys = re.search(r'<table id="dkim-keys">(.*?)</table>', page, re.S)[1]
    assert "<td>retired</td>" in keys and "<td>active</td>" in keys


def test_refusals(
    admin: PortalClient,  # noqa: F811
    support: PortalClient,  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    domain_id = _domain_id(session_factory)
    bad = admin.post(f"/domains/{domain_id}/dkim", {"selector": "a_b", "algorithm": "rsa"})
    assert bad.status_code == 422
    assert "DNS labels" in (field_error(bad.text, "selector") or "")
    bad = admin.post(f"/domains/{domain_id}/dkim", {"algorithm": "dsa"})
    assert bad.status_code == 422
    assert "unknown DKIM algorithm" in (field_error(bad.text, "algorithm") or "")
    assert admin.post("/domains/999/dkim", {"algorithm": "rsa"}).status_code == 404
    # Without the CSRF token, and for a support operator: refused.
    no_csrf = admin.http.post(f"/domains/{domain_id}/dkim", data={"algorithm": "rsa"})
    assert no_csrf.status_code == 403
    page = support.get(f"/domains/{domain_id}").text
    assert 'id="dns"' in page and "dkim-generate" not in page
    assert support.post(f"/domains/{domain_id}/dkim", {"algorithm": "rsa"}).status_code == 403
    with transaction(session_factory) as s:
        assert s.scalars(select(DkimKey)).all() == []
