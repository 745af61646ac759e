"""Request dependencies shared by the portal and the API: settings, store, a DB session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> MaildirStore:
    store: MaildirStore = request.app.state.store
    return store


def get_factory(request: Request) -> sessionmaker[Session]:
    """For routes that run their own transactions (the API: one per read or change)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on error.

    Used with ``scope="function"`` so the commit happens BEFORE the response is sent: a
    commit that fails turns into an error response instead of a success that was not saved.
    Routes that catch a service error and answer normally must roll back themselves.
    """
    factory: sessionmaker[Session] = request.app.state.session_factory
    with transaction(factory) as session:
        yield session


def client_ip(request: Request) -> str | None:
    """The peer address as seen by the server (no proxy headers are trusted)."""
    return request.client.host if request.client else None


FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[MaildirStore, Depends(get_store)]
