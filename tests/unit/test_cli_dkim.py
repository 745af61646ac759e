"""``mailhost domain dkim``: generate / list / show / retire, the records verify, errors exit
non-zero with one line and change nothing."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app import dkim
from app.services import dkim as dkim_service
from tests.dkim_helpers import signature_tags, verify
from tests.dnsserver import TestDNSServer
from tests.unit.test_cli import Run, assert_one_line_error, run, snapshot  # noqa: F401

MESSAGE = b"From: a@acme.example\r\nTo: b@remote.example\r\nSubject: s\r\n\r\nbody\r\n"


def _setup(run: Run) -> None:  # noqa: F811
    assert run("customer", "add", "Acme").status == 0
    assert run("domain", "add", "acme.example", "--customer", "Acme").status == 0


def test_generate_show_rotate_retire(run: Run, session: Session, dns_server: TestDNSServer) -> None:  # noqa: F811
    _setup(run)
    made = run("domain", "dkim", "generate", "acme.example", "--selector", "s1", "--json")
    assert made.status == 0, made
    key = made.json()
    assert (key["selector"], key["algorithm"], key["bits"], key["state"]) == (
        "s1",
        "rsa-sha256",
        2048,
        "active",
    )
    assert "PRIVATE" not in made.out
    assert key["record_name"] == "s1._domainkey.acme.example."
    assert "publish the record now" in made.err

    shown = run("domain", "dkim", "show", "acme.example", "--json")
    assert shown.status == 0, shown
    records = shown.json()
    assert [r["purpose"] for r in records] == ["mx", "spf", "dkim", "dmarc"]
    dkim_record = records[2]
    assert dkim_record["value"] == key["record_value"]
    dns_server.zone.txt(dkim_record["name"], dkim_record["value"])
    signing = dkim_service.signing_key_for(session, domain="acme.example")
    assert signing is not None
    assert verify(dkim.sign_message(MESSAGE, signing), dns_server)

    text = run("domain", "dkim", "show", "acme.example")
    assert text.status == 0
    assert 's1._domainkey.acme.example. IN TXT "v=DKIM1; k=rsa; p=' in text.out
    assert "acme.example. IN MX 10 mx.mailhost.example." in text.out

    rotated = run(
        "domain", "dkim", "generate", "acme.example", "--selector", "s2", "--algorithm", "ed25519"
    )
    assert rotated.status == 0, rotated
    assert "s1 no longer signs" in rotated.err
    listed = run("domain", "dkim", "list", "acme.example", "--json").json()
    assert [(k["selector"], k["state"], k["algorithm"]) for k in listed] == [
        ("s2", "active", "ed25519-sha256"),
        ("s1", "published", "rsa-sha256"),
    ]
    session.expire_all()
    signing = dkim_service.signing_key_for(session, domain="acme.example")
    assert signing is not None
    assert signature_tags(dkim.sign_message(MESSAGE, signing))["s"] == "s2"

    retired = run("domain", "dkim", "retire", "acme.example", "s1")
    assert retired.status == 0, retired
    assert retired.out == "DKIM key s1 of acme.example retired: remove its record from the zone\n"
    records = run("domain", "dkim", "show", "acme.example", "--json").json()
    assert [r["name"] for r in records if r["purpose"] == "dkim"] == ["s2._domainkey.acme.example."]
    table = run("domain", "dkim", "list", "acme.example")
    assert table.out.splitlines()[0].split() == [
        "SELECTOR",
        "ALGORITHM",
        "STATE",
        "CREATED_AT",
        "RETIRED_AT",
    ]
    assert "retired" in table.out


def test_errors_exit_non_zero_and_change_nothing(
    run: Run,  # noqa: F811
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _setup(run)
    assert run("domain", "dkim", "generate", "acme.example", "--selector", "s1").status == 0
    before = snapshot(engine)
    for argv, fragment in [
        (("generate", "unknown.example"), "domain unknown.example is not hosted here"),
        (("list", "unknown.example"), "is not hosted here"),
        (("show", "unknown.example"), "is not hosted here"),
        (("retire", "unknown.example", "s1"), "is not hosted here"),
        (("retire", "acme.example", "nope"), "acme.example has no DKIM key 'nope'"),
        (("generate", "acme.example", "--selector", "s1"), "selector s1 of acme.example is taken"),
        (("generate", "acme.example", "--selector", "bad_sel"), "DNS labels"),
    ]:
        assert_one_line_error(run("domain", "dkim", *argv), fragment)
    bad = run("domain", "dkim", "generate", "acme.example", "--algorithm", "dsa")
    assert bad.status == 2
    # argparse writes usage errors to the process's stderr, as one line too.
    assert "invalid choice: 'dsa'" in capsys.readouterr().err
    assert snapshot(engine) == before
