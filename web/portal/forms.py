"""Submitted forms: typed access to fields, and errors placed next to the field at fault."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session
from starlette.datastructures import FormData, UploadFile

from app.errors import MailhostError

# Never echoed back into a re-rendered form.
_SECRET_FIELDS = frozenset(
    {
        "password",
        "password_confirm",
        "current_password",
        "new_password",
        "new_password_confirm",
        "csrf_token",
        "csv_text",
    }
)


class PostForm:
    """A submitted form whose CSRF token was already checked."""

    def __init__(self, data: FormData) -> None:
        self._data = data

    def get(self, name: str, default: str = "") -> str:
        value = self._data.get(name)
        return value if isinstance(value, str) else default

    def text(self, name: str) -> str:
        return self.get(name).strip()

    def getlist(self, name: str) -> list[str]:
        return [v for v in self._data.getlist(name) if isinstance(v, str)]

    def checked(self, name: str) -> bool:
        return self.get(name) in ("on", "1", "true", "yes")

    def file(self, name: str) -> UploadFile | None:
        value = self._data.get(name)
        return value if isinstance(value, UploadFile) else None

    def values(self) -> dict[str, str]:
        """What the operator typed, to fill the form again (secrets left out)."""
        return {
            k: v
            for k, v in self._data.multi_items()
            if isinstance(v, str) and k not in _SECRET_FIELDS
        }


@dataclass
class FormState:
    """Values and per-field errors of one form, as the templates show them."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)
    fields: tuple[str, ...] = ()

    def add(self, exc: MailhostError, *, default_field: str | None = None) -> None:
        """Put a service error next to its field (or above the form if it names none)."""
        name = exc.field if exc.field in self.fields else default_field
        if name is not None and name in self.fields and name not in self.errors:
            self.errors[name] = exc.message
        else:
            self.general.append(exc.message)

    def error(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.general


@contextmanager
def saving(session: Session, form: FormState, *, default_field: str) -> Iterator[None]:
    """Commit what the block changed; a service error instead rolls it all back (nothing is
    half-saved) and is shown on ``form``. The caller re-renders the form when ``not form.ok``.
    """
    try:
        yield
        session.commit()
    except MailhostError as exc:
        session.rollback()
        form.add(exc, default_field=default_field)


def optional_int(text: str, *, field_name: str) -> int | None:
    from app.errors import ValidationError

    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValidationError("enter a whole number", field=field_name) from None
    if value < 0:
        raise ValidationError("must not be negative", field=field_name)
    return value


def optional_size(text: str, *, field_name: str) -> int | None:
    """'1G', '500M', '' -> bytes or None, with the error placed on ``field_name``."""
    from app.errors import ValidationError
    from app.services.mailboxes import parse_size

    text = text.strip()
    if not text:
        return None
    try:
        return parse_size(text)
    except ValidationError as exc:
        raise ValidationError(exc.message, field=field_name) from None


def size_text(value: int | None) -> str:
    """Bytes as the operator would type them: 1073741824 -> '1G' (exact, else bytes)."""
    if value is None:
        return ""
    for factor, unit in ((1024**4, "T"), (1024**3, "G"), (1024**2, "M"), (1024, "k")):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)
