"""Sessions, CSRF tokens, password hashes and the access rules of each audience.

The session cookie holds only the user id and the CSRF token (signed, not
encrypted): the user row is re-read on every request, so disabling a user or
changing their role takes effect at once.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from flask import abort, g, redirect, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

from centralita.panel import data
from centralita.panel.db import get_db

F = TypeVar("F", bound=Callable[..., Any])

# Compared against when the user does not exist, so a wrong user name costs the
# same time as a wrong password and names cannot be probed by timing.
_DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def verify_login(username: str, password: str) -> data.User | None:
    """The active user with these credentials, or None."""
    user = data.user_by_name(get_db(), username)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(user.password_hash, password) or not user.active:
        return None
    return user


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Refuse a form POST whose token does not match the session's (400)."""
    expected = session.get("csrf")
    sent = request.form.get("csrf_token", "")
    if not expected or not hmac.compare_digest(str(expected), sent):
        abort(400, description="The form expired or did not come from this panel; reload the page and try again.")


def start_session(user: data.User) -> None:
    """Fresh session on login: a session fixed before login is worth nothing after it."""
    session.clear()
    session.permanent = True
    session["user_id"] = user.id
    session["csrf"] = secrets.token_urlsafe(32)


def load_current_user() -> None:
    g.user = None
    user_id = session.get("user_id")
    if user_id is None:
        return
    user = data.user_by_id(get_db(), int(user_id))
    if user is None or not user.active:
        session.clear()
        return
    g.user = user


def role_required(role: str) -> Callable[[F], F]:
    """Views of one audience: anonymous users go to the login page, the other role gets 403."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if g.get("user") is None:
                return redirect(url_for("auth.login", next=request.path))
            if g.user.role != role:
                abort(403)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorate


def client_ip() -> str | None:
    return request.remote_addr
