"""The JSON API under /api/v1: provisioning and billing, bearer tokens, RFC 9457 errors."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from web.api.main import api_router
from web.api.problems import install_problem_handlers, use_problem_media_type

API_V1 = "/api/v1"


def install_api(app: FastAPI) -> None:
    """Mount the API routers under /api/v1 and its error handling (scoped to /api paths)."""
    api = APIRouter(prefix=API_V1)
    api.include_router(api_router)
    app.include_router(api)
    install_problem_handlers(app)

    # Errors are documented as application/problem+json (FastAPI would say application/json).
    original_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = use_problem_media_type(original_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
