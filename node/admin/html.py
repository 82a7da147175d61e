"""The console's HTML: escaping, the page frame, forms that always carry the CSRF token, small tables.

Pages are plain server-rendered HTML that works without JavaScript and with the keyboard alone (real
links, buttons and labels; a skip link; focus outlines in the CSS). Every value from the database, a peer
or a storage key is escaped here: a file name or a peer's actor URL is hostile text like any other.
"""
from __future__ import annotations

import html
import time
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode

NAV = (("/", "Overview"), ("/queue", "Review queue"), ("/peers", "Peers"), ("/verdicts", "Verdicts"),
       ("/evidence", "Evidence"), ("/audit", "Audit"))


def e(value: Any) -> str:
    """Escape for text and attribute values (None shows as empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else "never"


def link(path: str, text: str, query: Mapping[str, str] | None = None, cls: str = "") -> str:
    href = path + ("?" + urlencode(query) if query else "")
    return f'<a href="{e(href)}"{f" class={chr(34)}{e(cls)}{chr(34)}" if cls else ""}>{e(text)}</a>'


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(csrf)}">'


def form(action: str, csrf: str, body: str, *, cls: str = "inline", label: str | None = None) -> str:
    """A POST form with the session's CSRF token."""
    aria = f' aria-label="{e(label)}"' if label else ""
    return f'<form method="post" action="{e(action)}" class="{e(cls)}"{aria}>{csrf_field(csrf)}{body}</form>'


def button(text: str, *, name: str = "", value: str = "", cls: str = "") -> str:
    attrs = (f' name="{e(name)}"' if name else "") + (f' value="{e(value)}"' if value else "")
    return f'<button type="submit" class="{e(cls)}"{attrs}>{e(text)}</button>'


def field(label: str, name: str, value: Any = "", *, kind: str = "text", required: bool = False,
          extra: str = "", ident: str = "") -> str:
    """A labelled input; ``ident`` makes its id unique where a page repeats the form (one per row)."""
    ident = ident or f"f-{name}"
    req = " required" if required else ""
    return (f'<div class="field"><label for="{ident}">{e(label)}</label>'
            f'<input id="{ident}" type="{kind}" name="{e(name)}" value="{e(value)}"{req} {extra}></div>')


def select(label: str, name: str, options: Iterable[tuple[str, str]], chosen: str) -> str:
    ident = f"f-{name}"
    opts = "".join(f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(t)}</option>' for v, t in options)
    return (f'<div class="field"><label for="{ident}">{e(label)}</label>'
            f'<select id="{ident}" name="{e(name)}">{opts}</select></div>')


def long_text(text: str) -> str:
    """Escaped text that may break anywhere (paths, URLs, hashes, error lines), so that a table column of
    such tokens wraps instead of running off the page, while short words in other columns stay whole."""
    return f'<span class="long">{e(text)}</span>'


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, caption: str = "", empty: str = "",
          cls: str = "") -> str:
    """Cells are HTML already (escape what goes in). On a phone, ``cls="rowcards"`` shows each row as a card
    whose cells carry their column's name."""
    headers = list(headers)
    body = "".join("<tr>" + "".join(f'<td data-label="{e(h)}">{c}</td>' for h, c in zip(headers, row)) + "</tr>"
                   for row in rows)
    if not body:
        return f'<p class="empty">{e(empty)}</p>'
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    return (f'<div class="scroll"><table class="{e(cls)}">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def messages(lines: Iterable[tuple[str, str]]) -> str:
    """(kind, text) flash lines: kind is ok, warn or error."""
    out = "".join(f'<p class="msg {e(kind)}" role="{"alert" if kind == "error" else "status"}">{e(text)}</p>'
                  for kind, text in lines)
    return f'<div class="messages">{out}</div>' if out else ""


def page(title: str, body: str, *, account: str | None = None, csrf: str | None = None, current: str = "",
         flash: Iterable[tuple[str, str]] = ()) -> str:
    """The frame of every page: skip link, navigation (when logged in), flash messages, content."""
    nav = ""
    if account:
        items = "".join(f'<li><a href="{p}"{" aria-current=page" if p == current else ""}>{t}</a></li>'
                        for p, t in NAV)
        logout = form("/logout", csrf or "", button("Log out", cls="link"), label="log out")
        nav = (f'<nav aria-label="console"><ul>{items}</ul><div class="who">{e(account)} {logout}</div></nav>')
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)} · verdict-node console</title>"
            '<link rel="stylesheet" href="/static/console.css"></head><body>'
            '<a class="skip" href="#main">Skip to content</a>'
            f'<header><p class="brand">verdict-node · review console</p>{nav}</header>'
            f'<main id="main"><h1>{e(title)}</h1>{messages(flash)}{body}</main></body></html>')
