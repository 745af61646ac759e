"""The FastAPI application factory: state, health check, static files, portal and API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app import health
from app.config import Settings
from app.maildir import MaildirStore
from app.scanning.scanner import Scanner
from app.secret_key import load_secret_key
from web.api import install_api
from web.limits import BodyGuard
from web.monitoring import router as monitoring_router
from web.portal import install_portal, portal_too_large
from web.security import SecurityHeaders

STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    settings: Settings, *, session_factory: sessionmaker[Session], store: MaildirStore
) -> FastAPI:
    """Build one application; nothing is global, so a test can build as many as it likes."""
    app = FastAPI(
        title="Mailhost",
        docs_url="/api/v1/docs",
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.store = store
    # Keys the Idempotency-Key fingerprints; loaded (or generated) once, at start.
    app.state.secret_key = load_secret_key(settings)

    scanner = Scanner.from_settings(settings)
    app.state.scanner_checks = health.scanner_checks(settings)  # for /readyz

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        """Liveness plus database reachability (503 when the database does not answer) and
        the content scanners' state ("off", "up" or "down"; a scanner down is "degraded",
        not 503: inbound mail then gets 451 4.7.1 and is retried, nothing is lost)."""
        factory: sessionmaker[Session] = request.app.state.session_factory

        def ping_database() -> None:
            with factory() as session:
                session.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(ping_database)
        except SQLAlchemyError:
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        body: dict[str, object] = {"status": "ok", "database": "ok"}
        if scanner is not None:
            state = await scanner.state()
            body["scanners"] = {"rspamd": state.rspamd, "clamd": state.clamd}
            if not state.ok:
                body["status"] = "degraded"
        else:
            body["scanners"] = {"rspamd": "off", "clamd": "off"}
        return JSONResponse(body)

    app.include_router(monitoring_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    install_api(app)
    # After the API, so the portal's HTML error pages wrap (and delegate /api paths to)
    # whatever JSON error handlers the API installed.
    install_portal(app)
    # Outermost of the application's own layers: it answers before FastAPI reads a body.
    app.add_middleware(
        BodyGuard,
        session_factory=session_factory,
        max_body_bytes=settings.web_max_body_bytes,
        max_upload_bytes=settings.web_max_upload_bytes,
        portal_too_large=portal_too_large,
    )
    app.add_middleware(SecurityHeaders, https=settings.cookie_secure)
    return app
