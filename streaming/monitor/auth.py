"""Who may read the operators' view: an optional bearer token, checked by one aiohttp middleware in front
of every route of the worker's web server (ours and faust's own).

* No ``web_auth_token``: nothing is checked. ``worker.app.check_web_exposure`` allows that only when the
  server listens on loopback (``web_bind`` 127.0.0.1, the default); bound anywhere else without a token,
  the worker refuses to start.
* With a token, every path except ``/healthz`` (liveness probes carry no credentials; it answers only
  ``{"ok": true}``) needs one of:

  - ``Authorization: Bearer <token>`` — API clients, ``curl``, Prometheus (``authorization: {credentials: …}``
    in the scrape config; ``/metrics`` is protected like the rest);
  - the cookie ``as_session``, an HMAC of the token (HttpOnly, SameSite=Strict), so the browser dashboard
    and its ``EventSource`` work: open ``/?token=<token>`` once; the server sets the cookie and redirects
    to the same URL without the token, so it does not stay in the address bar or the history.

  Anything else gets ``401`` with ``WWW-Authenticate: Bearer``. Tokens are compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac

from aiohttp import web as aioweb

COOKIE = "as_session"
OPEN_PATHS = frozenset({"/healthz"})
COOKIE_MAX_AGE_S = 7 * 24 * 3600


def session_value(token: str) -> str:
    """The cookie value for ``token``: an HMAC, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"affectstream-dashboard-session", hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def authorized(request: aioweb.Request, token: str) -> bool:
    """True when ``request`` carries ``token`` as a bearer header or the session cookie."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value and _same(value.strip(), token):
        return True
    cookie = request.cookies.get(COOKIE)
    return bool(cookie) and _same(cookie, session_value(token))


def _unauthorized() -> aioweb.Response:
    return aioweb.json_response({"error": "authentication required: Authorization: Bearer <token>"}, status=401,
                                headers={"WWW-Authenticate": 'Bearer realm="affectstream"', "Cache-Control": "no-store"})


def token_middleware(token: str):
    """An aiohttp middleware enforcing ``token`` (see the module docstring); ``token`` must not be empty."""
    if not token:
        raise ValueError("token_middleware needs a token")

    @aioweb.middleware
    async def check(request: aioweb.Request, handler):
        if request.path in OPEN_PATHS or authorized(request, token):
            return await handler(request)
        offered = request.query.get("token")
        if offered is not None and request.method == "GET" and _same(offered, token):
            # the browser's way in: trade the token for a session cookie, drop it from the URL
            query = {k: v for k, v in request.query.items() if k != "token"}
            response = aioweb.Response(status=302, headers={"Location": str(request.rel_url.with_query(query))})
            response.set_cookie(COOKIE, session_value(token), max_age=COOKIE_MAX_AGE_S, httponly=True,
                                samesite="Strict", secure=request.secure, path="/")
            response.headers["Cache-Control"] = "no-store"
            return response
        return _unauthorized()

    return check
