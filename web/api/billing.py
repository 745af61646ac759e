"""Billing endpoints: the usage report (JSON or CSV) and the lifecycle event feed."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from app.csvsafe import safe_row
from app.db import transaction
from app.errors import NotFoundError, ValidationError
from app.services import billing
from app.services.tenancy import customer_scope
from web.api.auth import CustomerBillingReader
from web.api.problems import ApiProblem, ProblemRoute, problem_responses
from web.api.schemas import (
    CustomerUsagePublic,
    EventPage,
    EventPublic,
    RelayUsageLinePublic,
    UsageLinePublic,
    UsageReportPublic,
    price,
)
from web.deps import FactoryDep, StoreDep
from web.params import BIG_ID_MAX, ID_MAX, ID_MIN

router = APIRouter(route_class=ProblemRoute, tags=["billing"])

CSV_MEDIA_TYPE = "text/csv"

USAGE_DESCRIPTION = f"""
Per customer, for the UTC days of the period: mailboxes active (and suspended) at the end of
the period, the peak, billable mailbox-days, suspended days, current storage, the customer's
price per mailbox and the resulting amount, with one line item per domain.

* Period: `period=YYYY-MM`, or `from` and `to` (dates; `from` inclusive, `to` EXCLUSIVE, at
  most {billing.MAX_PERIOD_DAYS} days).
* A mailbox-day is billed for each UTC day on which the mailbox was active at any instant
  (created on the 20th of a 30-day month: 11 days; the day of a suspension, of a resumption
  and of the deletion are billed). A day on which it existed but was never active (its own
  suspension or its domain's) is a suspended day: reported, not billed.
* Days after the time of the request are not counted (the running month is "so far").
* `amount = price_per_mailbox * mailbox_days / days_in_period` per line item, rounded half-up
  to cents; the customer's amount is the sum of its line items. Money is a decimal string.
* `peak_mailboxes`: the most mailboxes billable on one day. `mailboxes_active_end`: active just
  before the end of the period (or now, for a running period).
* Storage is the current usage of the mailboxes that exist now.
* Relay domains ("SMTP mail connection") are billed per domain by the same day rule:
  `relay_line_items` (one per relay domain: `relay_domain_days`, `suspended_days`, `amount =
  price_per_relay_domain * relay_domain_days / days_in_period`), included in `amount`.
* CSV: `Accept: text/csv` or `format=csv`; one row per line item (`line` is `domain` or
  `relay_domain`) plus a `total` row per customer; the total's `suspended_days` counts mailbox
  days only.
"""


def _period(
    period: str | None, start: dt.date | None, end: dt.date | None
) -> tuple[dt.date, dt.date]:
    if period is not None:
        if start is not None or end is not None:
            raise ValidationError("give either period or from/to, not both", field="period")
        return billing.month_period(period)
    if start is None or end is None:
        raise ValidationError(
            "give period=YYYY-MM, or both from and to",
            field="from" if start is None else "to",
        )
    billing.check_period(start, end)
    return start, end


def _wants_csv(request: Request, fmt: str | None) -> bool:
    """``format`` wins; else content negotiation on Accept (RFC 9110 section 12.5.1)."""
    if fmt is not None:
        return fmt == "csv"
    best: tuple[float, int, bool] | None = None  # (q, -position, csv?)
    for position, part in enumerate(request.headers.get("accept", "").split(",")):
        media, *params = (p.strip().lower() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if media in (CSV_MEDIA_TYPE, "text/*"):
            candidate = (q, -position, True)
        elif media in ("application/json", "application/*", "*/*"):
            candidate = (q, -position, False)
        else:
            continue
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is None:
        if not request.headers.get("accept", "").strip():
            return False  # no Accept: anything goes, JSON by default
        raise ApiProblem(
            406,
            "not-acceptable",
            "Not acceptable",
            "this resource is available as application/json or text/csv",
            field="Accept",
        )
    return best[2]


CSV_COLUMNS = (
    "period_from",
    "period_to",
    "customer_id",
    "customer_name",
    "line",
    "domain",
    "currency",
    "price_per_mailbox",
    "mailboxes_active_end",
    "mailboxes_suspended_end",
    "peak_mailboxes",
    "mailbox_days",
    "suspended_days",
    "storage_bytes",
    "storage_messages",
    "amount",
    "price_per_relay_domain",
    "relay_domain_days",
)


def _csv(report: UsageReportPublic) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180 section 2: CRLF
    writer.writerow(CSV_COLUMNS)
    for c in report.customers:  # every row through safe_row: names are user input
        common = [
            report.from_.isoformat(),
            report.to.isoformat(),
            c.customer_id,
            c.customer_name or "",
        ]
        money = [c.currency or "", "" if c.price_per_mailbox is None else str(c.price_per_mailbox)]
        relay_price = "" if c.price_per_relay_domain is None else str(c.price_per_relay_domain)
        for li in c.line_items:
            writer.writerow(safe_row(
                [*common, "domain", li.domain, *money, li.mailboxes_active_end,
                 li.mailboxes_suspended_end, li.peak_mailboxes, li.mailbox_days,
                 li.suspended_days, li.storage_bytes, li.storage_messages,
                 "" if li.amount is None else str(li.amount), relay_price, 0]
            ))  # fmt: skip
        for ri in c.relay_line_items:  # one row per relay domain: mailbox columns are 0
            writer.writerow(safe_row(
                [*common, "relay_domain", ri.domain, *money, 0, 0, 0, 0, ri.suspended_days, 0,
                 0, "" if ri.amount is None else str(ri.amount), relay_price,
                 ri.relay_domain_days]
            ))  # fmt: skip
        writer.writerow(safe_row(
            [*common, "total", "", *money, c.mailboxes_active_end, c.mailboxes_suspended_end,
             c.peak_mailboxes, c.mailbox_days, c.suspended_days, c.storage_bytes,
             c.storage_messages, "" if c.amount is None else str(c.amount), relay_price,
             c.relay_domain_days]
        ))  # fmt: skip
    return out.getvalue()


@router.get(
    "/billing/usage",
    response_model=UsageReportPublic,
    description=USAGE_DESCRIPTION,
    responses={
        200: {"content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}}},
        **problem_responses(401, 403, 404, 406, 422, 503),
    },
)
def usage(
    request: Request,
    principal: CustomerBillingReader,
    factory: FactoryDep,
    store: StoreDep,
    period: Annotated[str | None, Query(max_length=7, description="YYYY-MM")] = None,
    start: Annotated[dt.date | None, Query(alias="from", description="inclusive")] = None,
    end: Annotated[dt.date | None, Query(alias="to", description="exclusive")] = None,
    customer_id: Annotated[int | None, Query(ge=ID_MIN, le=ID_MAX)] = None,
    fmt: Annotated[Literal["json", "csv"] | None, Query(alias="format")] = None,
) -> Response:
    first, after_last = _period(period, start, end)
    as_csv = _wants_csv(request, fmt)
    # A customer's token: its own customer only (another one is "not found").
    customer_id = customer_scope(principal.actor, customer_id)
    with transaction(factory) as s:
        report = billing.usage_report(
            s, start=first, end=after_last, customer_id=customer_id, store=store
        )
    if customer_id is not None and not report.customers:
        raise NotFoundError(f"no customer with id {customer_id}", field="customer_id")
    public = UsageReportPublic(
        from_=report.start,
        to=report.end,
        days=report.days,
        generated_at=report.generated_at,
        customers=[
            CustomerUsagePublic(
                customer_id=c.customer_id,
                customer_name=c.customer_name,
                currency=c.currency,
                price_per_mailbox=(
                    None if c.price_per_mailbox is None else price(c.price_per_mailbox)
                ),
                mailboxes_active_end=c.mailboxes_active_end,
                mailboxes_suspended_end=c.mailboxes_suspended_end,
                peak_mailboxes=c.peak_mailboxes,
                mailbox_days=c.mailbox_days,
                suspended_days=c.suspended_days,
                storage_bytes=c.storage_bytes,
                storage_messages=c.storage_messages,
                amount=c.amount,
                # A line's fields are named as in the service's UsageLine.
                line_items=[
                    UsageLinePublic.model_validate(li, from_attributes=True) for li in c.lines
                ],
                price_per_relay_domain=(
                    None if c.price_per_relay_domain is None else price(c.price_per_relay_domain)
                ),
                relay_domains_active_end=c.relay_domains_active_end,
                relay_domain_days=c.relay_domain_days,
                relay_line_items=[
                    RelayUsageLinePublic.model_validate(r, from_attributes=True)
                    for r in c.relay_lines
                ],
            )
            for c in report.customers
        ],
    )
    if as_csv:
        name = f"usage-{first.isoformat()}-{after_last.isoformat()}.csv"
        return Response(
            _csv(public),
            media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return Response(public.model_dump_json(by_alias=True), media_type="application/json")


@router.get(
    "/billing/events",
    response_model=EventPage,
    responses=problem_responses(401, 403, 422, 503),
    description=(
        "The append-only feed of mailbox, domain and relay-domain lifecycle events (created, "
        "suspended, resumed, deleted) in id order. Ids are handed out in commit order, so a "
        "client that stores `next_cursor` and asks again with `after=<it>` never misses an "
        "event and never sees one twice, also while several processes write."
    ),
)
def events(
    principal: CustomerBillingReader,
    factory: FactoryDep,
    after: Annotated[int, Query(ge=0, le=BIG_ID_MAX, description="Last id already seen.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    customer_id: Annotated[int | None, Query(ge=ID_MIN, le=ID_MAX)] = None,
) -> EventPage:
    customer_id = customer_scope(principal.actor, customer_id)
    with transaction(factory) as s:
        rows = billing.list_events(s, after_id=after, limit=limit, customer_id=customer_id)
        items = [EventPublic.of(e) for e in rows]
    return EventPage(items=items, next_cursor=items[-1].id if items else after)
