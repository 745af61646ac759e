"""Two-factor login (RFC 6238 TOTP) for operators and customer administrators.

Theory of operation: enrolment stores a fresh random secret unconfirmed; the account shows it
as a QR code (rendered here to SVG by ``segno``, no CDN) and confirms with a first code, which
turns the credential on and hands out ``RECOVERY_CODES`` one-time recovery codes, shown once
and stored as SHA-256 (they are 80 random bits, so a plain digest cannot be guessed back).
A login whose password verified then needs a current code (30-second steps, one step of
clock skew either way, RFC 6238 section 5.2) or an unused recovery code. The step of the last
accepted code is kept, so a code seen over a shoulder cannot be used twice. Guessing is
throttled by the edge with ``app.services.throttle`` like passwords.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import pyotp
import segno
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.errors import ConflictError, ValidationError
from app.models import RecoveryCode, TotpCredential, utcnow
from app.services.audit import Actor, audit

ISSUER = "Mailhost"
RECOVERY_CODES = 10
STEP_SECONDS = 30
VALID_WINDOW = 1  # steps of clock skew accepted either way
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # noqa: S105 - an alphabet


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose credential: an operator or a customer administrator (by id), and the user name
    shown in the authenticator app."""

    kind: str  # "operator" | "customer_admin"
    id: int
    username: str

    def where(self) -> object:
        if self.kind == "operator":
            return TotpCredential.operator_id == self.id
        return TotpCredential.customer_admin_id == self.id


def _credential(session: Session, owner: Owner) -> TotpCredential | None:
    return session.scalar(select(TotpCredential).where(owner.where()))  # type: ignore[arg-type]


def is_enrolled(session: Session, *, owner: Owner) -> bool:
    credential = _credential(session, owner)
    return credential is not None and credential.confirmed_at is not None


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def _normalise(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def provisioning_uri(secret: str, owner: Owner) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=owner.username, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The otpauth:// URI as an inline SVG QR code (error correction M, no XML declaration)."""
    return str(segno.make(uri, error="m").svg_inline(scale=5, dark="#111", light="#fff"))


def begin_enrolment(session: Session, *, owner: Owner) -> str:
    """A new unconfirmed secret (replacing an unconfirmed one); ConflictError if two-factor
    login is already on (turn it off first). Returns the base32 secret."""
    credential = _credential(session, owner)
    if credential is not None and credential.confirmed_at is not None:
        raise ConflictError("two-factor login is already on", field="code")
    secret = pyotp.random_base32()
    if credential is None:
        credential = TotpCredential(
            operator_id=owner.id if owner.kind == "operator" else None,
            customer_admin_id=owner.id if owner.kind != "operator" else None,
            secret=secret,
        )
        session.add(credential)
    else:
        credential.secret = secret
        credential.created_at = utcnow()
    session.flush()
    return secret


def pending_secret(session: Session, *, owner: Owner) -> str | None:
    credential = _credential(session, owner)
    if credential is None or credential.confirmed_at is not None:
        return None
    return credential.secret


def _accept_code(credential: TotpCredential, code: str, now: dt.datetime) -> bool:
    """A current TOTP code not used before (its step is recorded)."""
    code = _normalise(code)
    if len(code) != 6 or not code.isdigit():
        return False
    totp = pyotp.TOTP(credential.secret)
    step_now = int(now.timestamp()) // STEP_SECONDS
    for offset in range(-VALID_WINDOW, VALID_WINDOW + 1):
        step = step_now + offset
        expected = totp.at(step * STEP_SECONDS)
        if hmac.compare_digest(expected, code):
            if credential.last_step is not None and step <= credential.last_step:
                return False  # replayed (RFC 6238 section 5.2)
            credential.last_step = step
            return True
    return False


def confirm_enrolment(
    session: Session, *, actor: Actor, owner: Owner, code: str, now: dt.datetime | None = None
) -> list[str]:
    """Turn two-factor login on with a first code; the recovery codes (shown once)."""
    credential = _credential(session, owner)
    if credential is None or credential.confirmed_at is not None:
        raise ValidationError("start the enrolment first", field="code")
    if not _accept_code(credential, code, now or utcnow()):
        raise ValidationError(
            "this code is not valid: enter the 6 digits your app shows now", field="code"
        )
    credential.confirmed_at = now or utcnow()
    codes = _new_recovery_codes(session, credential)
    audit(
        session,
        actor=actor,
        action="totp.enable",
        object_type=owner.kind,
        object_id=owner.id,
        object_name=owner.username,
    )
    return codes


def _new_recovery_codes(session: Session, credential: TotpCredential) -> list[str]:
    session.execute(delete(RecoveryCode).where(RecoveryCode.credential_id == credential.id))
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(16))
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:12]}-{raw[12:]}")
        session.add(RecoveryCode(credential_id=credential.id, code_hash=_digest(_normalise(raw))))
    session.flush()
    return codes


def verify_second_factor(
    session: Session, *, owner: Owner, code: str, now: dt.datetime | None = None
) -> str | None:
    """'totp' or 'recovery' when ``code`` is a current code or an unused recovery code (which
    is then used up); None otherwise."""
    credential = _credential(session, owner)
    if credential is None or credential.confirmed_at is None:
        return None
    when = now or utcnow()
    if _accept_code(credential, code, when):
        session.flush()
        return "totp"
    digest = _digest(_normalise(code))
    row = session.scalar(
        select(RecoveryCode).where(
            RecoveryCode.credential_id == credential.id,
            RecoveryCode.code_hash == digest,
            RecoveryCode.used_at.is_(None),
        )
    )
    if row is None:
        return None
    row.used_at = when
    session.flush()
    return "recovery"


def recovery_codes_left(session: Session, *, owner: Owner) -> int:
    credential = _credential(session, owner)
    if credential is None:
        return 0
    rows = session.scalars(
        select(RecoveryCode.id).where(
            RecoveryCode.credential_id == credential.id, RecoveryCode.used_at.is_(None)
        )
    )
    return len(list(rows))


def reset(session: Session, *, actor: Actor, owner: Owner) -> bool:
    """Turn two-factor login off (lost phone: ``mailhost operator totp reset``, or the account
    itself). True if there was a credential."""
    credential = _credential(session, owner)
    if credential is None:
        return False
    session.delete(credential)
    session.flush()
    audit(
        session,
        actor=actor,
        action="totp.reset",
        object_type=owner.kind,
        object_id=owner.id,
        object_name=owner.username,
    )
    return True
