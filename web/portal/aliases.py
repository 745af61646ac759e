"""Alias pages: list and search, create, edit targets, delete."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.models import Alias, Domain
from app.services import aliases, domains
from web.deps import SessionDep
from web.params import Id, SearchText
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import PAGE_SIZE, redirect, split_page
from web.portal.forms import FormState, saving
from web.portal.render import render

router = APIRouter()

FIELDS = ("address", "targets")


def parse_targets(text: str) -> list[str]:
    """One address per line (commas and spaces accepted too)."""
    return [t for t in re.split(r"[\s,;]+", text) if t]


@router.get("/aliases")
def alias_list(
    request: Request,
    session: SessionDep,
    auth: AuthDep,
    q: SearchText = "",
    domain: Id | None = None,
    after: Id | None = None,
) -> HTMLResponse:
    scope: Domain | None = None
    if domain is not None:
        scope = domains.get_domain(session, domain_id=domain)
    rows = aliases.list_aliases(
        session, domain_id=domain, search=q.strip() or None, after_id=after, limit=PAGE_SIZE + 1
    )
    page, next_after = split_page(rows)
    return render(
        request,
        "aliases/list.html",
        {
            "aliases": page,
            "scope": scope,
            "q": q,
            "next_after": next_after,
        },
    )


@router.get("/aliases/new")
def alias_new(
    request: Request, session: SessionDep, auth: AdminDep, domain: Id | None = None
) -> HTMLResponse:
    values = {}
    if domain is not None:
        values["address"] = "@" + domains.get_domain(session, domain_id=domain).name
    return render(request, "aliases/new.html", {"form": FormState(values=values, fields=FIELDS)})


@router.post("/aliases/new", response_model=None)
def alias_create(request: Request, session: SessionDep, auth: AdminDep, data: FormDep) -> Response:
    form = FormState(values=data.values(), fields=FIELDS)
    with saving(session, form, default_field="address"):
        alias = aliases.create_alias(
            session,
            actor=auth.actor,
            address=data.text("address"),
            targets=parse_targets(data.get("targets")),
        )
    if not form.ok:
        return render(request, "aliases/new.html", {"form": form}, status=422)
    return redirect(f"/aliases/{alias.id}?done=created")


def _detail(
    request: Request, alias: Alias, form: FormState | None, status: int = 200
) -> HTMLResponse:
    form = form or FormState(
        values={"targets": "\n".join(t.address for t in alias.targets)}, fields=("targets",)
    )
    return render(request, "aliases/detail.html", {"alias": alias, "form": form}, status=status)


@router.get("/aliases/{alias_id}")
def alias_detail(
    request: Request, session: SessionDep, auth: AuthDep, alias_id: Id
) -> HTMLResponse:
    return _detail(request, aliases.get_alias(session, alias_id=alias_id), None)


@router.post("/aliases/{alias_id}/targets", response_model=None)
def alias_targets(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, alias_id: Id
) -> Response:
    aliases.get_alias(session, alias_id=alias_id)
    form = FormState(values=data.values(), fields=("targets",))
    with saving(session, form, default_field="targets"):
        aliases.set_alias_targets(
            session, actor=auth.actor, alias_id=alias_id, targets=parse_targets(data.get("targets"))
        )
    if not form.ok:
        return _detail(request, aliases.get_alias(session, alias_id=alias_id), form, status=422)
    return redirect(f"/aliases/{alias_id}?done=saved")


@router.get("/aliases/{alias_id}/delete")
def alias_delete_form(
    request: Request, session: SessionDep, auth: AdminDep, alias_id: Id
) -> HTMLResponse:
    return render(
        request, "aliases/delete.html", {"alias": aliases.get_alias(session, alias_id=alias_id)}
    )


@router.post("/aliases/{alias_id}/delete")
def alias_delete(session: SessionDep, auth: AdminDep, data: FormDep, alias_id: Id) -> Response:
    alias = aliases.get_alias(session, alias_id=alias_id)
    domain_id = alias.domain_id
    aliases.delete_alias(session, actor=auth.actor, alias_id=alias_id)
    session.commit()
    return redirect(f"/aliases?domain={domain_id}&done=deleted")
