"""Admin authentication: the bearer token, browser sessions and CSRF tokens.

Everything derives from the one admin token (``ANTIDISTILL_ADMIN_TOKEN``); nothing is kept
server-side, and changing the token invalidates every session and CSRF token at once.

- API clients send ``Authorization: Bearer <token>``: :func:`check_bearer`.
- The dashboard's login form posts the token (:func:`check_token`); the response sets a
  session cookie (:data:`SESSION_COOKIE`) holding :func:`make_session`, an HMAC-signed
  expiry ``SESSION_TTL_S`` from now, checked on every page by :func:`check_session`. Set
  it ``HttpOnly; SameSite=Strict; Path=/admin`` (and ``Secure`` behind TLS).
- Every state-changing form carries :func:`csrf_token` of the session (a hidden field
  named :data:`CSRF_FIELD`), checked by :func:`check_csrf` before acting.

All comparisons are constant-time (:func:`hmac.compare_digest` over fixed-length digests,
so not even the length of a wrong token leaks). An empty token never authenticates.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_TTL_S = 12 * 3600
SESSION_COOKIE = "antidistill_admin"
CSRF_FIELD = "csrf_token"
_CLOCK_SKEW_S = 60  # a session may not claim to expire later than TTL + this from now


def check_token(given: str | None, token: str) -> bool:
    """Whether ``given`` is the admin ``token`` (constant-time; False if either is empty)."""
    if not token or not given:
        return False
    return hmac.compare_digest(_digest(given), _digest(token))


def check_bearer(header_value: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (scheme in any case)."""
    if not header_value:
        return False
    scheme, _, given = header_value.strip().partition(" ")
    return scheme.lower() == "bearer" and check_token(given.strip(), token)


def make_session(token: str, now: float) -> str:
    """A session cookie value valid for ``SESSION_TTL_S`` after ``now`` (Unix seconds):
    ``<expires>.<nonce>.<hmac>``. The nonce makes every session (and its CSRF token)
    distinct."""
    payload = f"{int(now) + SESSION_TTL_S}.{secrets.token_urlsafe(16)}"
    return f"{payload}.{_sign(token, b'session', payload)}"


def check_session(cookie: str | None, token: str, now: float) -> bool:
    """Whether ``cookie`` is a session made by :func:`make_session` with this ``token`` that
    has not expired at ``now`` (Unix seconds)."""
    if not token or not cookie:
        return False
    parts = cookie.split(".")
    if len(parts) != 3 or not parts[0].isascii() or not parts[0].isdigit():
        return False
    payload = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_bytes(parts[2]), _bytes(_sign(token, b"session", payload))):
        return False
    expires = int(parts[0])
    return now < expires <= now + SESSION_TTL_S + _CLOCK_SKEW_S


def csrf_token(token: str, session: str) -> str:
    """The CSRF token of one session: put it in every form that changes state."""
    return _sign(token, b"csrf", session)


def check_csrf(value: str | None, token: str, session: str) -> bool:
    """Whether a submitted CSRF ``value`` belongs to ``session`` (check the session itself
    with :func:`check_session` first)."""
    if not token or not session or not value:
        return False
    return hmac.compare_digest(_bytes(value), _bytes(csrf_token(token, session)))


def _sign(token: str, purpose: bytes, payload: str) -> str:
    key = hmac.new(_bytes(token), b"antidistill-admin:" + purpose, hashlib.sha256).digest()
    return hmac.new(key, _bytes(payload), hashlib.sha256).hexdigest()


def _digest(text: str) -> bytes:
    return hashlib.sha256(_bytes(text)).digest()


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")
