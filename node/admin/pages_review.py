"""The review pages: the queue (filters, sort, pages, bulk actions), one item (scores against the
thresholds, verdicts and issuers, media flags, where it was, attribution), its previews and reveal, and
the action routes (confirm, release, delete in two steps, a peer's verdict retracted, purge via Lemmy)."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from node.admin.actions import PURGE_KINDS, ActionRefused
from node.admin.html import button, e, field, form, link, page, select, table, when
from node.admin.previews import PreviewError, blurred_png, read_quarantined, revealed_png
from node.admin.queue import KINDS, SORTS, Filters, QueueItem
from node.admin.web import client_of, console_of, done, html_response, refusal_page, session_of
from protocol.verdict import CATEGORIES

IMAGE_HEADERS = {"Content-Disposition": "inline"}


def _scores(item: QueueItem, thresholds: Any) -> str:
    """Score per category against the node's threshold (none: the category never blocks)."""
    parts = []
    for category in CATEGORIES:
        score = item.scores.get(category)
        limit = getattr(thresholds, category)
        if score is None:
            continue
        over = limit is not None and score >= limit
        against = f"≥ {limit:g}" if over else (f"< {limit:g}" if limit is not None else "never blocks")
        parts.append(f'<span class="score{" over" if over else ""}">{e(category)} {score:.3f} {e(against)}</span>')
    return " ".join(parts) or '<span class="muted">no scores (decided without a classifier\'s scores)</span>'


def _thumb(item: QueueItem) -> str:
    if item.has_file:
        return (f'<img class="thumb" src="/item/{e(item.ref)}/preview.png" alt="blurred greyscale preview of '
                f'{e(item.key)}" width="80" height="80">')
    return '<span class="nofile">no file kept</span>'


async def queue_page(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    filters, problems = Filters.parse(request.query)
    thresholds = console.node.policy.thresholds
    result = await asyncio.to_thread(console.queue.page, filters, thresholds)
    flash = console.take_flash(session.token_sha256) + [("warn", p) for p in problems]
    controls = ('<form method="get" action="/queue" class="filters" aria-label="filter the queue">'
                + select("Kind", "kind", [("", "all kinds"), *[(k, k) for k in KINDS]], filters.kind)
                + select("Category", "category", [("", "any"), *[(c, c) for c in CATEGORIES]], filters.category)
                + field("Score at least", "min_score", "" if filters.min_score is None else f"{filters.min_score:g}",
                        extra='inputmode="decimal" placeholder="0.5"')
                + field("Peer", "peer", filters.peer, extra='placeholder="peer.example"')
                + field("From", "since", filters.query().get("since", ""), kind="date")
                + field("To", "until", filters.query().get("until", ""), kind="date")
                + select("Sort", "sort", list(SORTS.items()), filters.sort)
                + button("Apply filters") + "</form>")
    rows = []
    for item in result.items:
        peers = ", ".join(sorted(item.issuers)) or ("own" if any(v.own for v in item.verdicts) else item.origin or "")
        rows.append([
            f'<input type="checkbox" name="item" value="{e(item.ref)}" id="pick-{e(item.ref)}" form="bulk">'
            f'<label for="pick-{e(item.ref)}" class="sr">select {e(item.label)}</label>',
            _thumb(item),
            f'{link("/item/" + item.ref, item.label)}<br><span class="muted">{e(item.kind)} · '
            f'{e(item.source)}</span>',
            _scores(item, thresholds), e(peers), e(when(item.decided_at))])
    listing = table(["", "Preview", "Item", "Scores against thresholds", "Decided by", "Decided"], rows,
                    caption=f"{result.total} item(s) awaiting review, page {result.page} of {result.pages}",
                    empty="Nothing awaits review with these filters.", cls="rowcards")
    bulk = form("/queue/bulk", session.csrf,
                field("Reason (recorded; for release: sent to peers with the retraction)", "reason", "")
                + button("Confirm selected as positives", name="action", value="confirm")
                + button("Release selected as false positives", name="action", value="release", cls="warn"),
                cls="bulk", label="act on the selected items").replace("<form ", '<form id="bulk" ', 1)
    pager = []
    if result.page > 1:
        pager.append(link("/queue", "← previous page", filters.query(page=result.page - 1)))
    if result.page < result.pages:
        pager.append(link("/queue", "next page →", filters.query(page=result.page + 1)))
    body = controls + listing + (f'<p class="pager">{" ".join(pager)}</p>' if pager else "") + (bulk if rows else "")
    return html_response(page("Review queue", body, account=session.account, csrf=session.csrf, current="/queue",
                              flash=flash))


def _item_or_404(request: web.Request) -> QueueItem:
    ref = request.match_info["ref"]
    item = console_of(request).queue.get(ref, reviewed_too=True)
    if item is None:
        raise web.HTTPNotFound(text=f"no queue item {ref}")
    return item


def _public(url: Any) -> str:
    """A link to the instance's own page of a person, post or comment: only http(s) (the URL comes from
    another system's database), never sending this page as referrer."""
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return f'<a href="{e(url)}" rel="noreferrer">{e(url)}</a>'
    return '<span class="muted">no public link</span>'


def _purge_targets(details: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(kind, Lemmy id, label as HTML) of the uploaders, posts and comments an attribution names, in the shape
    node.attribution's Lemmy reader gives them: ``details["lemmy"]`` with ``uploads`` (each with its
    ``uploader``, a person_id), ``posts`` (post_id) and ``comments`` (comment_id), each with its public link."""
    lemmy = details.get("lemmy") if isinstance(details.get("lemmy"), dict) else {}
    targets: list[tuple[str, int, str]] = []
    for upload in lemmy.get("uploads") or []:
        person = upload.get("uploader") if isinstance(upload, dict) else None
        if isinstance(person, dict) and isinstance(person.get("person_id"), int) and \
                all(t[:2] != ("person", person["person_id"]) for t in targets):
            targets.append(("person", person["person_id"],
                            f"uploader {e(person.get('name'))} {_public(person.get('actor_url'))}"))
    for kind, key in (("post", "posts"), ("comment", "comments")):
        for entry in lemmy.get(key) or []:
            if isinstance(entry, dict) and isinstance(entry.get(f"{kind}_id"), int):
                target_id = entry[f"{kind}_id"]
                targets.append((kind, target_id, f"{kind} {target_id} {_public(entry.get('ap_id'))}"))
    return targets


def _attribution(request: web.Request, item: QueueItem, found: Any) -> str:
    session = session_of(request)
    if found is None:
        return '<p class="muted">Attribution is not installed: no uploader or posts to show.</p>'
    out = [f"<p>{e(found.summary)}</p>"]
    out += [f'<p class="msg warn">{e(p)}</p>' for p in found.problems]
    if request.query.get("search_text") != "1":
        out.append(f'<p class="hint">Posts are matched by their link and thumbnail. '
                   f'{link(f"/item/{item.ref}?search_text=1", "Also search post and comment text")} '
                   f'(a full scan of those tables: slow on a big instance).</p>')
    targets = _purge_targets(found.details or {})
    for kind, target_id, label in targets:
        out.append(form(f"/item/{item.ref}/purge", session.csrf,
                        f'<input type="hidden" name="kind" value="{e(kind)}"><input type="hidden" name="target" '
                        f'value="{target_id}">' + f"<span>{label}</span>"
                        + field(f"Reason to purge {kind} {target_id}", "reason", "", extra='required',
                                ident=f"f-purge-{kind}-{target_id}")
                        + button(f"Purge {kind} {target_id} via Lemmy", cls="danger"),
                        cls="stack purge", label=f"purge {kind} {target_id}"))
    return "".join(out)


async def item_page(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    item = _item_or_404(request)
    thresholds = console.node.policy.thresholds
    review = console.queue.review_of(item.ref)
    facts = [("Kind", item.kind), ("Source", item.source), ("Key / alias", item.key or "(pict-rs named none)"),
             ("sha256", item.sha256), ("pixel sha256", item.pixel_sha256), ("pHash", item.phash64),
             ("PDQ", item.pdq256), ("Decided by", item.origin), ("Reason", item.reason),
             ("Media flags", ", ".join(f"{k}: {v}" for k, v in item.media_flags.items()) or "none"),
             ("First seen", when(item.first_seen)), ("Decided", when(item.decided_at)),
             ("Times seen", item.times_seen), ("Quarantined at", item.location or "no file kept")]
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts)
    verdict_rows = []
    for index, v in enumerate(item.verdicts):
        retract = ""
        if not v.own and not v.retracted:
            retract = form(f"/item/{item.ref}/retract-peer", session.csrf,
                           f'<input type="hidden" name="verdict_id" value="{e(v.verdict_id)}">'
                           + field("Reason", "reason", "", extra="required", ident=f"f-retract-{index}")
                           + button("Retract this peer's verdict locally", cls="warn"), cls="stack")
        verdict_rows.append([e(v.verdict_id), e("this node" if v.own else v.issuer), e(v.label),
                             " ".join(f"{e(k)} {s:.3f}" for k, s in sorted(v.scores.items())),
                             e(f"retracted: {v.retracted}" if v.retracted else "in force"), retract])
    preview = (f'<img class="preview" src="/item/{e(item.ref)}/preview.png" alt="blurred greyscale preview of '
               f'{e(item.key)}">' if item.has_file else
               '<p class="nofile big">No file kept: pict-rs keeps nothing of a rejected upload.</p>')
    reveal = ""
    if item.has_file and console.settings.allow_reveal:
        reveal = f'<p>{link(f"/item/{item.ref}/reveal", "Reveal the unblurred image…", cls="button warn")}</p>'
    actions = ""
    if review:
        actions = (f'<p class="msg ok">Reviewed: {e(review["decision"])} by {e(review["reviewer"])} at '
                   f'{e(when(review["reviewed_at"]))}{": " + e(review["note"]) if review["note"] else ""}.</p>')
        if review["decision"] == "confirmed" and item.has_file:  # evidence may be destroyed once it is not needed
            actions += form(f"/item/{item.ref}/delete", session.csrf,
                            '<p class="hint">The file is kept as evidence. Deleting it asks again, and needs "force" '
                            'while its evidence record protects it.</p>' + button("Delete the file…", cls="danger"),
                            cls="stack", label="delete")
    else:
        actions = (form(f"/item/{item.ref}/confirm", session.csrf, field("Note (kept with the evidence)", "note", "")
                        + button("Confirm: keep as evidence", cls="primary"), cls="stack", label="confirm")
                   + form(f"/item/{item.ref}/release", session.csrf,
                          field("Reason (sent to peers with the retraction)", "reason", "",
                                extra='placeholder="false positive: a galaxy"', ident="f-release-reason")
                          + button("Release: false positive", cls="warn"), cls="stack", label="release"))
        if item.has_file:
            actions += form(f"/item/{item.ref}/delete", session.csrf,
                            '<p class="hint">Destroys the quarantined file for good (you are asked again first); '
                            'any evidence record stays.</p>' + button("Delete the file…", cls="danger"),
                            cls="stack", label="delete")
    found = None
    if console.node.attribution is not None and item.sha256:
        found = await console.node.attribution.attribute(item.sha256, source=item.source, key=item.key or None,
                                                         search_text=request.query.get("search_text") == "1")
    body = (f'<div class="item"><div class="look">{preview}{reveal}</div>'
            f'<div class="facts"><h2>Scores against this node\'s thresholds</h2><p>{_scores(item, thresholds)}</p>'
            f'<dl>{dl}</dl></div></div>'
            f'<h2>Verdicts used</h2>' + table(["Verdict", "Issuer", "Label", "Scores", "State", ""], verdict_rows,
                                               empty="No verdict: decided by a hash bank, the media rules or "
                                                     "on_unavailable.")
            + f"<h2>Uploader and posts</h2>{_attribution(request, item, found)}"
            + f'<h2>Decision</h2><div class="actions">{actions}</div>')
    return html_response(page(item.title(), body, account=session.account, csrf=session.csrf, current="/queue",
                              flash=console.take_flash(session.token_sha256)))


async def preview(request: web.Request) -> web.Response:
    console = console_of(request)
    item = _item_or_404(request)
    if not item.has_file:
        raise web.HTTPNotFound(text=f"{item.title()}: no file kept")
    try:
        data = await asyncio.to_thread(read_quarantined, item.location or "", console.node.config.media.max_bytes,
                                      item.sha256)
        png = await asyncio.to_thread(blurred_png, data, console.node.config.media_limits(),
                                      console.settings.preview_side, item.location or "")
    except PreviewError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    return web.Response(body=png, content_type="image/png", headers=IMAGE_HEADERS)


def _reveal_allowed(request: web.Request, item: QueueItem) -> None:
    console = console_of(request)
    if not console.settings.allow_reveal:
        console.audit.write(session_of(request).account, "reveal", item.audit_target,
                            "refused: admin.allow_reveal is false", client_of(request))
        raise web.HTTPForbidden(text="reveal is switched off on this node (admin.allow_reveal: false)")
    if not item.has_file:
        raise web.HTTPNotFound(text=f"{item.title()}: no file kept, nothing to reveal")


async def reveal_warning(request: web.Request) -> web.Response:
    session = session_of(request)
    item = _item_or_404(request)
    _reveal_allowed(request, item)
    body = ('<div class="warning"><p><strong>This shows the image without blur.</strong> It may be child sexual '
            'abuse material. Look only if the scores, the verdicts and the blurred preview cannot settle it. The '
            'reveal is recorded in the audit log under your name.</p><p>Take a break after distressing material; '
            'nobody should review alone for long.</p></div>'
            + form(f"/item/{item.ref}/reveal", session.csrf, button("I understand: reveal this image once",
                                                                   cls="danger"), cls="stack")
            + f'<p>{link("/item/" + item.ref, "No, go back")}</p>')
    return html_response(page(f"Reveal {item.key}?", body, account=session.account, csrf=session.csrf,
                              current="/queue"))


async def reveal(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    item = _item_or_404(request)
    _reveal_allowed(request, item)
    grant = console.grant_reveal(session.token_sha256, item.ref)
    console.audit.write(session.account, "reveal", item.audit_target, f"revealed {item.location}", client_of(request))
    body = (f'<p class="msg warn">Revealed once for you (audited). Reloading will not show it again.</p>'
            f'<img class="revealed" src="/item/{e(item.ref)}/revealed.png?grant={e(grant)}" alt="unblurred image '
            f'{e(item.key)}"><p>{link("/item/" + item.ref, "Back to the item (blurred)")}</p>')
    return html_response(page(f"Revealed: {item.key}", body, account=session.account, csrf=session.csrf,
                              current="/queue"))


async def revealed(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    item = _item_or_404(request)
    _reveal_allowed(request, item)
    if not console.use_reveal(request.query.get("grant", ""), session.token_sha256, item.ref):
        raise web.HTTPForbidden(text="this reveal was used or has expired: confirm the reveal again")
    try:
        data = await asyncio.to_thread(read_quarantined, item.location or "", console.node.config.media.max_bytes,
                                      item.sha256)
        png = await asyncio.to_thread(revealed_png, data, console.node.config.media_limits(), item.location or "")
    except PreviewError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    return web.Response(body=png, content_type="image/png", headers=IMAGE_HEADERS)


async def _act(request: web.Request, what: str) -> web.StreamResponse:
    console, session = console_of(request), session_of(request)
    item = _item_or_404(request)
    data = await request.post()
    client = client_of(request)
    back = f"/item/{item.ref}"
    review = console.queue.review_of(item.ref)
    if review and (what in ("confirm", "release") or (what == "delete-confirm" and review["decision"] != "confirmed")):
        raise done(request, back, "warn", f"{item.title()} was reviewed already ({review['decision']} by "
                   f"{review['reviewer']}): nothing done.")
    try:
        if what == "confirm":
            line = await console.actions.confirm(item, session.account, str(data.get("note", "")), client)
        elif what == "release":
            line = await console.actions.release(item, session.account, str(data.get("reason", "")), client)
        elif what == "delete-confirm":
            if data.get("confirm") != "delete":
                raise ActionRefused(f"{item.title()} was not deleted: the second confirmation was missing")
            line = await console.actions.delete(item, session.account, force=data.get("force") == "yes",
                                                client=client)
        elif what == "retract-peer":
            line = console.actions.retract_peer_verdict(item, str(data.get("verdict_id", "")), session.account,
                                                        str(data.get("reason", "")), client)
        else:
            target = str(data.get("target", ""))
            if not target.isdigit():
                raise ActionRefused(f"purge: {target!r} is not a Lemmy id")
            found = None
            if console.node.attribution is not None and item.sha256:
                found = await console.node.attribution.attribute(item.sha256, source=item.source,
                                                                 key=item.key or None)
            named = {(kind, ident) for kind, ident, _ in _purge_targets(found.details or {})} if found else set()
            line = await console.actions.purge(str(data.get("kind", "")), int(target), session.account,
                                               str(data.get("reason", "")), client, item=item, named=named)
    except ActionRefused as exc:
        raise done(request, back, "error", str(exc)) from None
    raise done(request, "/queue" if what in ("confirm", "release", "delete-confirm") else back, "ok", line)


async def confirm(request: web.Request) -> web.StreamResponse:
    return await _act(request, "confirm")


async def release(request: web.Request) -> web.StreamResponse:
    return await _act(request, "release")


async def delete_confirmed(request: web.Request) -> web.StreamResponse:
    return await _act(request, "delete-confirm")


async def retract_peer(request: web.Request) -> web.StreamResponse:
    return await _act(request, "retract-peer")


async def purge(request: web.Request) -> web.StreamResponse:
    return await _act(request, "purge")


async def delete_step_one(request: web.Request) -> web.Response:
    """The first of the two steps: says what will be destroyed and what stays, and asks again."""
    console, session = console_of(request), session_of(request)
    item = _item_or_404(request)
    if not item.has_file:
        return refusal_page(request, 404, "Nothing to delete", f"{item.title()}: no file kept, nothing to delete.")
    protecting = console.node.evidence.protecting(item.sha256, location=item.location)
    guard = ""
    if protecting:
        guard = (f'<p class="msg error">Evidence record {protecting["id"]} (confirmed by '
                 f'{e(protecting["reviewer"])}) protects this file until {e(when(protecting["retain_until"]))}. '
                 f'Deleting it now needs "force".</p><p><input type="checkbox" name="force" value="yes" id="f-force">'
                 f'<label for="f-force">force: delete although the evidence record protects it</label></p>')
    body = (f'<p>This destroys the quarantined file <code>{e(item.location)}</code> ({e(item.key)} from '
            f'{e(item.source)}). It cannot be undone. Any evidence record stays.</p>'
            + form(f"/item/{item.ref}/delete/confirm", session.csrf,
                   guard + '<input type="hidden" name="confirm" value="delete">'
                   + button("Yes, delete the file for good", cls="danger"), cls="stack")
            + f'<p>{link("/item/" + item.ref, "No, keep it")}</p>')
    return html_response(page(f"Delete {item.key}?", body, account=session.account, csrf=session.csrf,
                              current="/queue"))


async def bulk(request: web.Request) -> web.StreamResponse:
    console, session = console_of(request), session_of(request)
    data = await request.post()
    action = data.get("action")
    refs = [str(r) for r in data.getall("item", [])]
    if action not in ("confirm", "release"):
        raise done(request, "/queue", "error", f"unknown bulk action {action!r}: nothing done")
    if not refs:
        raise done(request, "/queue", "warn", "No item was selected: tick the boxes of the items first.")
    reason = str(data.get("reason", ""))
    for ref in refs:
        item = console.queue.get(ref)
        if item is None:
            console.flash(session.token_sha256, "warn", f"{ref}: not in the queue (reviewed already?), skipped")
            continue
        try:
            if action == "confirm":
                line = await console.actions.confirm(item, session.account, reason, client_of(request))
            else:
                line = await console.actions.release(item, session.account, reason, client_of(request))
            console.flash(session.token_sha256, "ok", line)
        except ActionRefused as exc:
            console.flash(session.token_sha256, "error", str(exc))
    raise web.HTTPSeeOther("/queue")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/queue", queue_page)
    app.router.add_post("/queue/bulk", bulk)
    app.router.add_get("/item/{ref}", item_page)
    app.router.add_get("/item/{ref}/preview.png", preview)
    app.router.add_get("/item/{ref}/reveal", reveal_warning)
    app.router.add_post("/item/{ref}/reveal", reveal)
    app.router.add_get("/item/{ref}/revealed.png", revealed)
    app.router.add_post("/item/{ref}/confirm", confirm)
    app.router.add_post("/item/{ref}/release", release)
    app.router.add_post("/item/{ref}/delete", delete_step_one)
    app.router.add_post("/item/{ref}/delete/confirm", delete_confirmed)
    app.router.add_post("/item/{ref}/retract-peer", retract_peer)
    app.router.add_post("/item/{ref}/purge", purge)


__all__ = ["add_routes", "PURGE_KINDS"]
