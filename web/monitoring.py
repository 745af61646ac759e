"""The web service's monitoring routes: /metrics (bearer token), /livez and /readyz."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app import health, metrics
from app.config import Settings

router = APIRouter(include_in_schema=False)


def _token_ok(settings: Settings, header: str | None) -> bool:
    token = settings.metrics_token
    if token is None or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].encode(), token.get_secret_value().encode())


@router.get("/metrics")
async def metrics_page(request: Request) -> Response:
    """Every worker's instruments and the queue figures, for a scraper holding the token."""
    settings: Settings = request.app.state.settings
    if settings.metrics_token is None:
        # Not configured: as if there were no such page (scrape the metrics port instead).
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    if not _token_ok(settings, request.headers.get("authorization")):
        return JSONResponse(
            {"detail": "a bearer token (MAILHOST_METRICS_TOKEN) is required"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    exposition = metrics.Exposition(session_factory=request.app.state.session_factory)
    body = await run_in_threadpool(metrics.render, exposition)
    return Response(body, media_type=metrics.CONTENT_TYPE)


@router.get("/livez")
def livez() -> JSONResponse:
    """The process answers (nothing else is checked: see app/health.py)."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Database, Maildir volume (and scanners when configured); 503 naming what is wrong."""
    report = health.readiness(
        session_factory=request.app.state.session_factory,
        maildir_root=request.app.state.store.root,
        scanners=getattr(request.app.state, "scanner_checks", ()),
    )
    return JSONResponse(report.as_json(), status_code=200 if report.ok else 503)
