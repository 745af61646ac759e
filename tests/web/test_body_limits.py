"""Request-body limits and authentication-before-body, through the app's HTTP interface.

The peak-memory check against a real ``mailhost serve`` process is in
``tests/protocol/test_web_body_limits.py``; here the small limits of a test configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from tests.web.api_helpers import assert_problem, bearer, make_token
from tests.web.portal_helpers import PortalClient, add_operator
from web.app import create_app

LIMIT = 2000


@pytest.fixture
def client(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[TestClient]:
    small = settings.model_copy(update={"web_max_body_bytes": LIMIT})
    app = create_app(small, session_factory=session_factory, store=store)
    with TestClient(app) as c:
        yield c


def _json_body(size: int) -> bytes:
    return b'{"name": "' + b"a" * (size - 12) + b'"}'


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 500):
        yield body[start : start + 500]


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_oversized_api_bodies_get_413_and_anonymous_ones_401_first(
    client: TestClient, session_factory: sessionmaker[Session], chunked: bool
) -> None:
    token = make_token(session_factory, "provisioning")
    big = _json_body(LIMIT + 1)
    content: Any = _chunks(big) if chunked else big
    headers = {"Content-Type": "application/json"}

    anonymous = client.post("/api/v1/customers", content=content, headers=headers)
    assert_problem(anonymous, 401, field="Authorization")
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="mailhost"'

    content = _chunks(big) if chunked else big
    forged = client.post(
        "/api/v1/customers", content=content, headers={**headers, **bearer("mh_forged")}
    )
    assert_problem(forged, 401)
    assert 'error="invalid_token"' in forged.headers["www-authenticate"]

    content = _chunks(big) if chunked else big
    too_large = client.post(
        "/api/v1/customers", content=content, headers={**headers, **bearer(token)}
    )
    body = assert_problem(too_large, 413)
    assert str(LIMIT) in body["detail"]
    assert too_large.headers["connection"] == "close"

    # At the limit it is an ordinary request again.
    content = _chunks(_json_body(LIMIT)) if chunked else _json_body(LIMIT)
    fits = client.post("/api/v1/customers", content=content, headers={**headers, **bearer(token)})
    assert fits.status_code == 422, fits.text  # the name is longer than 200 characters


def test_token_checked_before_the_body_still_needs_the_scope(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    reader = make_token(session_factory, "read")
    response = client.post("/api/v1/customers", json={"name": "Acme"}, headers=bearer(reader))
    assert_problem(response, 403)
    writer = make_token(session_factory, "provisioning")
    response = client.post("/api/v1/customers", json={"name": "Acme"}, headers=bearer(writer))
    assert response.status_code == 201, response.text


def test_portal_forms_are_capped_but_the_csv_import_gets_the_upload_limit(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    add_operator(session_factory, "alice", "admin")
    portal = PortalClient(client)
    assert portal.login("alice").status_code == 303

    refused = portal.post("/customers/new", {"name": "x" * (LIMIT + 10)})
    assert refused.status_code == 413
    assert refused.headers["content-type"].startswith("text/html")
    assert "Too large" in refused.text

    rows = "".join(f"user{i}@nowhere.example,secret-password-{i},,\r\n" for i in range(200))
    csv_file = ("address,password,password_hash,quota\r\n" + rows).encode()
    assert len(csv_file) > LIMIT
    preview = portal.post("/import/preview", files={"file": ("m.csv", csv_file, "text/csv")})
    assert preview.status_code == 422, preview.text[:500]  # a preview: the domain is unknown
    assert "rows are wrong" in preview.text
