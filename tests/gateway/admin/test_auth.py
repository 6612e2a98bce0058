"""Admin authentication helpers: bearer token, signed sessions, CSRF tokens."""

from __future__ import annotations

from gateway.admin.auth import (
    SESSION_TTL_S,
    check_bearer,
    check_csrf,
    check_session,
    check_token,
    csrf_token,
    make_session,
)

TOKEN = "s3cret-admin-token"
NOW = 1_700_000_000.0


def test_bearer() -> None:
    assert check_bearer(f"Bearer {TOKEN}", TOKEN)
    assert check_bearer(f"bearer   {TOKEN} ", TOKEN)
    for value in (None, "", "Bearer", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer \udc80"):
        assert not check_bearer(value, TOKEN), value
    assert not check_bearer("Bearer ", "")  # no token configured: nothing authenticates
    assert check_token(TOKEN, TOKEN) and not check_token("", "") and not check_token(None, TOKEN)


def test_session_lifetime_and_tampering() -> None:
    session = make_session(TOKEN, NOW)
    assert session != make_session(TOKEN, NOW)  # a nonce each
    assert check_session(session, TOKEN, NOW)
    assert check_session(session, TOKEN, NOW + SESSION_TTL_S - 1)
    assert not check_session(session, TOKEN, NOW + SESSION_TTL_S)
    assert not check_session(session, "another-token", NOW)  # a new token ends all sessions
    expires, nonce, sig = session.split(".")
    longer = f"{int(expires) + 3600}.{nonce}.{sig}"
    assert not check_session(longer, TOKEN, NOW)
    flipped = sig[:-1] + ("1" if sig.endswith("0") else "0")
    assert not check_session(f"{expires}.{nonce}.{flipped}", TOKEN, NOW)
    assert not check_session(f"{expires}.other.{sig}", TOKEN, NOW)
    for bad in (None, "", "x", "1.2", "a.b.c", "1.2.3.4", "\uff11\uff12.n.s"):
        assert not check_session(bad, TOKEN, NOW), bad
    # a validly signed session that claims to outlive the TTL is refused
    far = make_session(TOKEN, NOW + 10 * SESSION_TTL_S)
    assert not check_session(far, TOKEN, NOW)


def test_csrf_is_bound_to_the_session() -> None:
    one, two = make_session(TOKEN, NOW), make_session(TOKEN, NOW)
    token = csrf_token(TOKEN, one)
    assert check_csrf(token, TOKEN, one)
    assert not check_csrf(token, TOKEN, two)
    assert not check_csrf(token, "another-token", one)
    assert not check_csrf(None, TOKEN, one) and not check_csrf("", TOKEN, one)
    assert not check_csrf(token, TOKEN, "")
