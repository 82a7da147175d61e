"""The console's HTTP application: its own aiohttp app on its own listener (``admin.listen``), never routes
on the federation listener.

Two middlewares wrap every route:
  - ``headers``: a strict Content-Security-Policy (nothing inline, nothing from elsewhere), nosniff,
    no referrer, no framing, and ``Cache-Control: no-store`` on every answer, pages and images alike;
  - ``guard``: without a live session, GET answers 303 to /login and anything else 401 (only /login and
    the stylesheet are public); a POST must carry the session's CSRF token (403 otherwise); an account still
    on its one-time password is sent to /password first.
Login, logout and the password change live here too; the pages are node.admin.pages_*.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from node.admin.accounts import AccountError
from node.admin.console import Console
from node.admin.html import button, csrf_field, e, field, form, page
from node.admin.sessions import COOKIE, Session

log = logging.getLogger("verdict_node.admin")

CONSOLE_KEY: web.AppKey[Console] = web.AppKey("console", Console)
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("session", Session)
STATIC = Path(__file__).parent / "static"
PUBLIC = ("/login", "/static/console.css")
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-store",
                    "Cross-Origin-Resource-Policy": "same-origin"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE_KEY]


def session_of(request: web.Request) -> Session:
    return request[SESSION_KEY]


def client_of(request: web.Request) -> str | None:
    """The client's address: the socket's peer, or behind a trusted proxy (``admin.trust_proxy``) the
    address that proxy appended last to X-Forwarded-For (everything before it the client wrote)."""
    if console_of(request).settings.trust_proxy:
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        if forwarded:
            return forwarded.split(",")[-1].strip()
    return request.remote


def over_https(request: web.Request) -> bool:
    if request.secure:
        return True
    return console_of(request).settings.trust_proxy and \
        request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower() == "https"


def html_response(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def refusal_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    session = request.get(SESSION_KEY)
    body = f'<p class="msg error" role="alert">{e(message)}</p><p><a href="/queue">Back to the review queue</a></p>'
    return html_response(page(title, body, account=session.account if session else None,
                              csrf=session.csrf if session else None), status)


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def done(request: web.Request, location: str, kind: str, text: str) -> web.HTTPSeeOther:
    """After a POST: the message for the next page, and a 303 to it."""
    console_of(request).flash(session_of(request).token_sha256, kind, text)
    return redirect(location)


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    except Exception:  # noqa: BLE001 - a bug still answers with the headers, and says so
        log.exception("console: %s %s failed", request.method, request.path)
        response = html_response(page("Internal error", '<p class="msg error" role="alert">The console failed on '
                                      'this request; nothing more was done. The node\'s log has the details.</p>'), 500)
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = console_of(request)
    if request.path in PUBLIC:
        return await handler(request)
    session = console.sessions.find(request.cookies.get(COOKIE))
    if session is None:
        if request.method in ("GET", "HEAD"):
            raise redirect("/login")
        return html_response(page("Not logged in", '<p class="msg error" role="alert">Not logged in (or the session '
                                  'ended): <a href="/login">log in</a> again.</p>'), 401)
    request[SESSION_KEY] = session
    if request.method == "POST":
        data = await request.post()
        if not session.csrf_ok(data.get("csrf") if isinstance(data.get("csrf"), str) else None):
            console.audit.write(session.account, "csrf-refused", f"{request.method} {request.path}",
                                "refused: the form's CSRF token did not match this session", client_of(request))
            return refusal_page(request, 403, "Refused: form token mismatch",
                                f"POST {request.path} was refused: the form's CSRF token does not match your session "
                                f"(a form from an old session, another tab after a new login, or a forged request). "
                                f"Nothing was changed; reload the page and try again.")
    account = console.accounts.get(session.account)
    if account is None:
        console.sessions.end(session)
        raise redirect("/login")
    if account.must_change and request.path not in ("/password", "/logout"):
        if request.method == "GET":
            raise redirect("/password")
        return refusal_page(
            request, 403, "Choose a new password first", "Your account still uses its one-time password: "
            "choose a new one on the password page before anything else.")
    return await handler(request)


# -- login, logout, password ----------------------------------------------------------------------------

LOGIN_COOKIE = "vn_login"


def _login_token(request: web.Request) -> str:
    """The login form's CSRF token: there is no session yet, so the token is a cookie of its own (HttpOnly,
    SameSite=Strict, for /login only) that the form repeats. A page elsewhere cannot read it, so it cannot
    log a browser into an account of the attacker's choosing (login CSRF)."""
    token = request.cookies.get(LOGIN_COOKIE, "")
    return token if len(token) == 43 and token.replace("-", "").replace("_", "").isalnum() else secrets.token_urlsafe(32)


def _with_login_token(response: web.Response, request: web.Request, token: str) -> web.Response:
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=over_https(request),
                        path="/login", max_age=3600)
    return response


def _login_form(token: str, message: str = "", name: str = "") -> str:
    note = f'<p class="msg error" role="alert">{e(message)}</p>' if message else ""
    return note + (
        f'<form method="post" action="/login" class="stack">{csrf_field(token)}'
        + field("Account", "name", name, required=True, extra='autocomplete="username" autofocus')
        + field("Password", "password", kind="password", required=True, extra='autocomplete="current-password"')
        + button("Log in", cls="primary") + "</form>"
        '<p class="hint">No account yet? On the node\'s machine run <code>verdict-node admin add NAME</code>: it '
        'prints a one-time password.</p>')


async def login_page(request: web.Request) -> web.Response:
    token = _login_token(request)
    return _with_login_token(html_response(page("Log in", _login_form(token))), request, token)


async def login(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    data = await request.post()
    name, password = str(data.get("name", "")).strip(), str(data.get("password", ""))
    client = client_of(request)
    token = _login_token(request)
    given = data.get("csrf")
    if not (isinstance(given, str) and request.cookies.get(LOGIN_COOKIE)
            and hmac.compare_digest(given.encode(), request.cookies[LOGIN_COOKIE].encode())):
        console.audit.write(name or "?", "login", name, "refused: the login form's token did not match", client)
        return _with_login_token(html_response(page("Log in", _login_form(
            token, "This login form had expired or did not come from this console: nothing was logged in. "
                   "Enter your password again.", name)), 403), request, token)
    wait = console.limiter.retry_after(name, client)
    if wait is not None:
        console.audit.write(name or "?", "login", name, f"refused: rate limited for {wait:.0f} s more", client)
        response = html_response(page("Log in", _login_form(
            token, f"Too many failed logins for this account or from this address: try again in {wait:.0f} seconds "
            f"(admin.login_max_failures = {console.settings.login_max_failures} within "
            f"{console.settings.login_window_seconds:g} s).", name)), 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    # argon2id costs tens of milliseconds of CPU and 64 MiB: off the event loop, which also answers pict-rs.
    if not name or not await asyncio.to_thread(console.accounts.verify, name, password):
        console.limiter.failed(name, client)
        console.audit.write(name or "?", "login", name, "refused: wrong account name or password", client)
        wrong = "Wrong account name or password: nothing was logged in. Check both and try again."
        return html_response(page("Log in", _login_form(token, wrong, name)), 401)
    console.limiter.succeeded(name)
    session_token = console.sessions.start(name, client)
    console.accounts.logged_in(name)
    console.audit.write(name, "login", name, "logged in", client)
    response = redirect("/")
    response.del_cookie(LOGIN_COOKIE, path="/login")
    response.set_cookie(COOKIE, session_token, httponly=True, samesite="Strict", secure=over_https(request), path="/",
                        max_age=int(console.settings.session_max_hours * 3600))
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    console, session = console_of(request), session_of(request)
    console.sessions.end(session)
    console.audit.write(session.account, "logout", session.account, "logged out", client_of(request))
    response = html_response(page("Logged out", '<p class="msg ok" role="status">You are logged out: this '
                                  'session has ended on the node. <a href="/login">Log in again</a>.</p>'))
    response.del_cookie(COOKIE, path="/")
    return response


def _password_form(csrf: str, forced: bool, message: str = "") -> str:
    why = ("<p>Your account still uses the one-time password that <code>admin add</code> printed: choose your "
           "own (at least 12 characters) before anything else.</p>" if forced else "")
    note = f'<p class="msg error" role="alert">{e(message)}</p>' if message else ""
    return why + note + form("/password", csrf, field("Current password", "current", kind="password", required=True,
                                                      extra='autocomplete="current-password"')
                             + field("New password", "new", kind="password", required=True,
                                     extra='autocomplete="new-password" minlength="12"')
                             + field("New password again", "again", kind="password", required=True,
                                     extra='autocomplete="new-password"')
                             + button("Change password", cls="primary"), cls="stack")


async def password_page(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    account = console.accounts.get(session.account)
    return html_response(page("Password", _password_form(session.csrf, bool(account and account.must_change)),
                              account=session.account, csrf=session.csrf,
                              flash=console.take_flash(session.token_sha256)))


async def change_password(request: web.Request) -> web.StreamResponse:
    console, session = console_of(request), session_of(request)
    data = await request.post()
    account = console.accounts.get(session.account)
    forced = bool(account and account.must_change)

    def again(message: str, status: int = 400) -> web.Response:
        console.audit.write(session.account, "password", session.account, f"refused: {message}", client_of(request))
        return html_response(page("Password", _password_form(session.csrf, forced, message), account=session.account,
                                  csrf=session.csrf), status)

    if not await asyncio.to_thread(console.accounts.verify, session.account, str(data.get("current", ""))):
        return again("The current password is wrong: the password was not changed.", 403)
    if data.get("new") != data.get("again"):
        return again("The two new passwords differ: the password was not changed.")
    try:
        await asyncio.to_thread(console.accounts.set_password, session.account, str(data.get("new", "")))
    except AccountError as exc:
        return again(f"{exc}: the password was not changed.")
    console.sessions.end_others(session)
    console.audit.write(session.account, "password", session.account, "password changed; other sessions ended",
                        client_of(request))
    raise done(request, "/", "ok", "Password changed: your other sessions have ended.")


async def stylesheet(request: web.Request) -> web.Response:
    return web.Response(body=(STATIC / "console.css").read_bytes(), content_type="text/css", charset="utf-8")


def build_app(console: Console, pages: list[Callable[[web.Application], None]]) -> web.Application:
    """The console's application: the middlewares, login and logout, the stylesheet, then each page module's
    routes (``pages``: functions that add them)."""
    app = web.Application(middlewares=[headers, guard], client_max_size=1024 * 1024)
    app[CONSOLE_KEY] = console
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/password", password_page)
    app.router.add_post("/password", change_password)
    app.router.add_get("/static/console.css", stylesheet)
    for add in pages:
        add(app)
    return app


def query_of(request: web.Request) -> dict[str, Any]:
    return {k: v for k, v in request.query.items()}
