"""What operators see: rejections with their reason on the domain's scanning page, the day's
rejected/tagged/clean counts on the dashboard, and the policy and lists edited in the portal."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.services import domains, scan_policy
from tests.protocol.smtp_helpers import IngressThread
from tests.scanners import GTUBE
from tests.scanning.test_ingress_scanning import message, send, sender_domain
from tests.web.portal_helpers import PortalClient, admin, portal_app  # noqa: F401

__all__ = ["sender_domain"]


def _domain_id(factory: sessionmaker[Session], name: str) -> int:
    with transaction(factory) as s:
        return domains.get_domain_by_name(s, name=name).id


def test_rejections_and_daily_counts_in_the_portal(
    scan_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    admin: PortalClient,  # noqa: F811
) -> None:
    ingress = scan_start(scan_tag_score=-50.0)  # every scored message is tagged
    code, text = send(ingress, message(GTUBE.decode() + "\r\n"))
    assert code == 550
    queue_id = text.rsplit(" ", 1)[1]
    assert send(ingress, message())[0] == 250
    ingress.stop()  # flushes the batched counters and rejections
    page = admin.get(f"/domains/{_domain_id(session_factory, 'hosted.example')}/scanning")
    assert page.status_code == 200
    table = page.text.split('id="rejection-table"', 1)[1]
    assert queue_id in table and "Gtube pattern" in table and "rejected" in table
    dashboard = admin.get("/").text
    today = dt.datetime.now(dt.UTC).date().isoformat()
    row = re.search(rf'<tr data-day="{today}">(.*?)</tr>', dashboard, re.S)
    assert row is not None
    cells = dict(re.findall(r'<td class="(\w+)">(\d+)</td>', row.group(1)))
    assert (cells["rejected"], cells["tagged"], cells["clean"]) == ("1", "1", "0")


def test_policy_and_lists_edited_in_the_portal(
    session_factory: sessionmaker[Session],
    admin: PortalClient,  # noqa: F811
) -> None:
    from tests.factories import make_domain

    with transaction(session_factory) as s:
        domain_id = make_domain(s, "portal.example").id
    url = f"/domains/{domain_id}/scanning"
    saved = admin.post(
        url, {"reject_score": "9", "tag_score": "", "subject_tag": "[JUNK]", "greylisting": "on"}
    )
    assert saved.status_code == 303, saved.text
    page = admin.get(url).text
    assert 'id="eff-reject">9.0<' in page and "[JUNK]" in page and 'id="eff-grey">on' in page
    bad = admin.post(
        url, {"reject_score": "9", "tag_score": "12", "subject_tag": "", "greylisting": ""}
    )
    assert bad.status_code == 422 and "tag_score must be below reject_score" in bad.text
    assert (
        admin.post(f"{url}/list", {"list": "block", "value": "198.51.100.0/24"}).status_code == 303
    )
    bad = admin.post(f"{url}/list", {"list": "block", "value": "not an entry!"})
    assert bad.status_code == 422
    with transaction(session_factory) as s:
        entries = scan_policy.list_entries(s, domain_id=domain_id)
        assert [(e.list_name, e.value) for e in entries] == [("block", "198.51.100.0/24")]
        assert scan_policy.own_override(s, scope="domain", scope_id=domain_id)["tag_score"] is None
    removed = admin.post(f"{url}/list/remove", {"list": "block", "value": "198.51.100.0/24"})
    assert removed.status_code == 303
    assert "No entries." in admin.get(url).text


def test_customer_scan_policy_in_the_portal(
    session_factory: sessionmaker[Session],
    admin: PortalClient,  # noqa: F811
) -> None:
    from tests.factories import make_customer, make_domain

    with transaction(session_factory) as s:
        customer = make_customer(s, "Policy Customer")
        domain_id = make_domain(s, "policy.example", customer=customer).id
        customer_id = customer.id
    url = f"/customers/{customer_id}/scanning"
    assert 'id="customer-scanning-link"' in admin.get(f"/customers/{customer_id}").text
    saved = admin.post(
        url, {"reject_score": "10", "tag_score": "3", "subject_tag": "", "greylisting": "off"}
    )
    assert saved.status_code == 303, saved.text
    domain_page = admin.get(f"/domains/{domain_id}/scanning").text
    assert 'id="eff-reject">10.0 (inherited)<' in domain_page
    for form, error in (
        ({"reject_score": "10", "tag_score": "11"}, "tag_score must be below reject_score"),
        ({"reject_score": "nan"}, "enter a finite number"),
        ({"reject_score": "2000"}, "reject_score must be between"),
        ({"greylisting": "maybe"}, "choose on, off or inherit"),
    ):
        bad = admin.post(url, {"subject_tag": "", "greylisting": "", **form})
        assert bad.status_code == 422 and error in bad.text, (form, bad.status_code)
    with transaction(session_factory) as s:
        kept = scan_policy.own_override(s, scope="customer", scope_id=customer_id)
    assert kept == {
        "reject_score": 10.0,
        "tag_score": 3.0,
        "subject_tag": None,
        "greylisting": False,
    }
    assert admin.get("/customers/999999/scanning").status_code == 404
