"""Exceptions the portal raises to leave a route early: an error page or the login page."""

from __future__ import annotations


class PortalError(Exception):
    """Answer with the error page: ``status`` plus a title and an explanation for humans."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(f"{status} {title}: {message}")
        self.status = status
        self.title = title
        self.message = message


class LoginRequired(Exception):
    """No valid session: redirect to the login page, then back to ``next_url``."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def not_found(what: str = "page") -> PortalError:
    return PortalError(404, "Not found", f"This {what} does not exist (or was deleted).")


def forbidden_role(role: str, doing: str) -> PortalError:
    return PortalError(
        403,
        "Not allowed for your role",
        f"Operators with the role '{role}' may not {doing}. Ask an administrator.",
    )


class SeeOther(LoginRequired):
    """Send the browser to ``target`` (303): the two-factor enrolment an admin must do first,
    or a customer administrator's home ``/my`` after logging in at ``/``."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target
