"""The node-wide pages: the overview (charts from the decisions table, queue depth, workers), peers (follow
requests to approve or reject, trust, model, verdicts received, last contact, delivery backlog and
failures), verdicts (search by sha256, pHash or PDQ with distances; retract our own), evidence records, and
the audit log."""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from node.admin.actions import ActionRefused
from node.admin.charts import daily_stats, day_ends, lines, stacked_bars
from node.admin.html import button, e, field, form, link, long_text, page, table, when
from node.admin.web import client_of, console_of, done, html_response, session_of
from scanners.fingerprint import hamming

HEX = re.compile(r"[0-9a-f]+\Z")


async def overview(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    stats = await asyncio.to_thread(daily_stats, console.node.store)
    depths = await asyncio.to_thread(console.queue.depth_at, day_ends(stats))
    depth = depths[-1]  # the last moment is now
    workers = console.links.workers()
    if workers is None:
        worker_text = "<p>No remote workers: this node classifies with its own backend (or none).</p>"
    elif not workers:
        worker_text = "<p>Remote workers are enabled; none is connected now.</p>"
    else:
        worker_text = "<ul>" + "".join(f"<li>{e(w)}</li>" for w in workers) + "</ul>"
    problem = console.node.classifier_problem()
    shares = [f"{s:.0%}" if s is not None else "–" for s in stats.peer_share]
    numbers = table(["Day", *stats.by_origin, "peer share", "p50 ms", "p95 ms", "awaiting review"],
                    [[e(d), *[str(stats.by_origin[o][i]) for o in stats.by_origin], e(shares[i]),
                      e(f"{stats.p50[i]:.0f}" if stats.p50[i] is not None else "–"),
                      e(f"{stats.p95[i]:.0f}" if stats.p95[i] is not None else "–"), str(depths[i])]
                     for i, d in enumerate(stats.days)], caption="The charts' numbers")
    body = (f'<div class="cards"><p class="card"><span class="big">{depth}</span> item(s) '
            f'{link("/queue", "await review")}</p>'
            f'<p class="card">Classifier: {e(problem or "available")}</p></div>'
            f"<h2>Images decided per day</h2>{stacked_bars(stats)}"
            "<h2>Inference skipped thanks to peers</h2><p>Of the images that needed a classifier or a peer, the share "
            "a peer's verdict decided.</p>"
            + lines(stats, {"share": stats.peer_share}, "Share of inference skipped thanks to peers", "", top=1.0)
            + "<h2>Review queue</h2>" + lines(stats, {"awaiting review": depths},
                                              "Items awaiting review at the end of each day", "")
            + "<h2>Hook latency</h2>" + lines(stats, {"p50": stats.p50, "p95": stats.p95},
                                               "pict-rs hook latency per day (ms)", " ms")
            + f"<h2>Workers</h2>{worker_text}<details><summary>The numbers</summary>{numbers}</details>")
    return html_response(page("Overview", body, account=session.account, csrf=session.csrf, current="/",
                              flash=console.take_flash(session.token_sha256)))


def _peer_facts(store: Any) -> dict[str, dict[str, Any]]:
    facts: dict[str, dict[str, Any]] = {}
    for issuer, count, last, model in store.conn.execute(
            "SELECT issuer, count(*), max(received_at), (SELECT model_name || ' ' || model_version FROM verdicts v2"
            " WHERE v2.issuer = v.issuer ORDER BY id DESC LIMIT 1) FROM verdicts v WHERE own = 0 GROUP BY issuer"):
        facts[issuer] = {"verdicts": count, "last_verdict": last, "model": model}
    for actor, updated, failing in store.conn.execute(
            "SELECT actor, updated_at, (SELECT count(*) FROM deliveries d WHERE d.inbox = p.inbox AND"
            " d.delivered_at IS NULL AND d.attempts > 0) FROM peers p"):
        facts.setdefault(actor, {}).update(updated=updated, failing=failing)
    return facts


async def peers_page(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    listing = console.links.peer_listing() if console.links.peer_listing else []
    facts = _peer_facts(console.node.store)
    pending, rows = [], []
    for p in listing:
        f = facts.get(p["actor"], {})
        if p["they_follow_us"] == "pending":
            pending.append([e(p["actor"]), e(p["trust"] or "not in peers.yaml"),
                            form("/peers/approve", session.csrf, f'<input type="hidden" name="actor" '
                                 f'value="{e(p["actor"])}">' + button(f"Approve {p['actor']}", cls="primary"))
                            + form("/peers/reject", session.csrf, f'<input type="hidden" name="actor" '
                                   f'value="{e(p["actor"])}">' + button(f"Reject {p['actor']}", cls="warn"))])
        last = max([t for t in (f.get("last_verdict"), f.get("updated")) if t], default=None)
        rows.append([e(p["actor"]), e(p["trust"] or "not in peers.yaml: its verdicts are not used"),
                     e(f.get("model") or "–"), str(f.get("verdicts", 0)), e(when(last)),
                     e(f"follows us: {p['they_follow_us']}; we follow: {p['we_follow_them']}"),
                     long_text(f"{p['queued_deliveries']} queued, {f.get('failing', 0)} failing"
                       + (f"; last error: {p['last_error']}" if p.get("last_error") else ""))])
    body = ("<h2>Follow requests</h2>" + table(["Actor", "Trust", "Decide"], pending,
                                              empty="No follow request is waiting.")
            + "<h2>Peers</h2>" + table(["Actor", "Trust", "Model", "Verdicts received", "Last contact", "Follows",
                                        "Delivery backlog"], rows,
                                       empty="No peers: list them in peers.yaml (verdict-node peers add)."))
    return html_response(page("Peers", body, account=session.account, csrf=session.csrf, current="/peers",
                              flash=console.take_flash(session.token_sha256)))


async def _follow(request: web.Request, approve: bool) -> web.StreamResponse:
    console, session = console_of(request), session_of(request)
    actor = str((await request.post()).get("actor", ""))
    try:
        line = console.actions.follow_decision(actor, approve, session.account, client_of(request))
    except ActionRefused as exc:
        raise done(request, "/peers", "error", str(exc)) from None
    raise done(request, "/peers", "ok", line)


async def approve(request: web.Request) -> web.StreamResponse:
    return await _follow(request, True)


async def reject(request: web.Request) -> web.StreamResponse:
    return await _follow(request, False)


def search_verdicts(node: Any, query: str) -> tuple[list[tuple[dict[str, Any], str]], str]:
    """Verdicts for a sha256 (bytes or pixels), a pHash-64 (16 hex) or a PDQ-256 (64 hex, also tried as a
    sha256), with how each matched; and a line saying what was searched."""
    q = query.strip().lower()
    if not HEX.match(q) or len(q) not in (16, 64):
        return [], "give a sha256 or PDQ (64 hex digits) or a pHash (16 hex digits)"
    columns = "id, verdict_id, issuer, own, label, scores, sha256, pixel_sha256, phash64, pdq256, retracted_at, " \
              "retract_reason"
    found: dict[int, tuple[dict[str, Any], str]] = {}

    def add(rows: Any, how: Any) -> None:
        for row in rows:
            record = dict(zip([c.strip() for c in columns.split(",")], row))
            record["scores"] = json.loads(record["scores"])
            found.setdefault(record["id"], (record, how(record)))

    conn = node.store.conn
    if len(q) == 64:
        add(conn.execute(f"SELECT {columns} FROM verdicts WHERE sha256 = ?1 OR pixel_sha256 = ?1", (q,)),
            lambda r: "sha256" if r["sha256"] == q else "pixel sha256")
        near = node.pdq_index.search(q, node.policy.block_pdq_distance)
        kind, column = "PDQ", "pdq256"
    else:
        near = node.phash_index.search(q, node.policy.block_phash_distance)
        kind, column = "pHash", "phash64"
    ids = [rowid for rowid, _distance in near][:200]
    if ids:
        add(conn.execute(f"SELECT {columns} FROM verdicts WHERE id IN ({','.join('?' * len(ids))})", ids),
            lambda r: f"{kind} distance {hamming(r[column], q)}" if r[column] else kind)
    if len(q) == 64:  # retracted verdicts are in no index: exact PDQ matches among them still show
        add(conn.execute(f"SELECT {columns} FROM verdicts WHERE pdq256 = ?", (q,)), lambda r: "PDQ distance 0")
    else:
        add(conn.execute(f"SELECT {columns} FROM verdicts WHERE phash64 = ?", (q,)), lambda r: "pHash distance 0")
    return list(found.values()), f"{len(found)} verdict(s) for {q}"


async def verdicts_page(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    query = request.query.get("q", "")
    results, summary = search_verdicts(console.node, query) if query else ([], "")
    rows = []
    for index, (r, how) in enumerate(results):
        act = ""
        if r["own"] and r["retracted_at"] is None:
            act = form("/verdicts/retract", session.csrf, f'<input type="hidden" name="verdict_id" '
                       f'value="{e(r["verdict_id"])}"><input type="hidden" name="q" value="{e(query)}">'
                       + field("Reason (sent to peers)", "reason", "", extra="required", ident=f"f-retract-{index}")
                       + button("Retract at every peer", cls="warn"), cls="stack")
        rows.append([e(r["verdict_id"]), e("this node" if r["own"] else r["issuer"]), e(r["label"]),
                     " ".join(f"{e(k)} {v:.3f}" for k, v in sorted(r["scores"].items())), e(how),
                     e(f"retracted: {r['retract_reason']}" if r["retracted_at"] else "in force"), act])
    body = ('<form method="get" action="/verdicts" class="filters">'
            + field("sha256, pHash or PDQ", "q", query, extra='spellcheck="false" size="64"') + button("Search")
            + "</form>" + (f"<p>{e(summary)}</p>" if summary else "")
            + table(["Verdict", "Issuer", "Label", "Scores", "Match", "State", ""], rows,
                    empty="" if not query else "No verdict matches."))
    return html_response(page("Verdicts", body, account=session.account, csrf=session.csrf, current="/verdicts",
                              flash=console.take_flash(session.token_sha256)))


async def retract_verdict(request: web.Request) -> web.StreamResponse:
    console, session = console_of(request), session_of(request)
    data = await request.post()
    back = "/verdicts?" + (f"q={data.get('q')}" if data.get("q") else "")
    try:
        line = console.actions.retract_own(str(data.get("verdict_id", "")), session.account,
                                           str(data.get("reason", "")), client_of(request))
    except ActionRefused as exc:
        raise done(request, back, "error", str(exc)) from None
    raise done(request, back, "ok", line)


async def evidence_page(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    records = console.node.evidence.list(limit=200)
    rows = [[link(f"/evidence/{r['id']}", f"record {r['id']}"), e(r["sha256"][:16] + "…"), e(r["source"]),
             e(r["key"] or "–"), e(r["reviewer"]), e(when(r["reviewed_at"])), e(when(r["retain_until"]))]
            for r in records]
    body = (f"<p>{console.node.evidence.count()} record(s). A record is never deleted by the node; it protects its "
            "file until its retention ends.</p>"
            + table(["Record", "sha256", "Source", "Key", "Reviewer", "Reviewed", "File kept until"], rows,
                    empty="No evidence record yet: confirm a positive in the review queue."))
    return html_response(page("Evidence", body, account=session.account, csrf=session.csrf, current="/evidence"))


def _record(request: web.Request) -> dict[str, Any]:
    raw = request.match_info["id"]
    record = console_of(request).node.evidence.get(int(raw)) if raw.isdigit() else None
    if record is None:
        raise web.HTTPNotFound(text=f"no evidence record {raw}")
    return record


async def evidence_record(request: web.Request) -> web.Response:
    session = session_of(request)
    record = _record(request)
    facts = "".join(f"<dt>{e(k)}</dt><dd>{e(when(v) if k.endswith('_at') or k == 'retain_until' else v)}</dd>"
                    for k, v in record.items() if k not in ("decision", "attribution"))
    body = (f"<dl>{facts}</dl><h2>Decision</h2><pre>{e(json.dumps(record['decision'], indent=2))}</pre>"
            f"<h2>Attribution</h2><pre>{e(json.dumps(record['attribution'], indent=2))}</pre>"
            + "<p>" + link(f"/evidence/{record['id']}.json", "Download as JSON") + "</p>")
    return html_response(page(f"Evidence record {record['id']}", body, account=session.account, csrf=session.csrf,
                              current="/evidence"))


async def evidence_json(request: web.Request) -> web.Response:
    record = _record(request)
    console_of(request).audit.write(session_of(request).account, "evidence-download", f"record {record['id']}",
                                    "downloaded as JSON", client_of(request))
    return web.Response(body=json.dumps(record, indent=2, sort_keys=True).encode(), content_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="evidence-{record["id"]}.json"'})


async def audit_page(request: web.Request) -> web.Response:
    console, session = console_of(request), session_of(request)
    raw = request.query.get("page", "1")
    number = int(raw) if raw.isdigit() and int(raw) > 0 else 1
    actor, action = request.query.get("actor", "").strip(), request.query.get("action", "").strip()
    entries = console.audit.entries(limit=100, offset=(number - 1) * 100, actor=actor or None,
                                    action=action or None)
    rows = [[e(when(a.at)), e(a.actor), e(a.action), long_text(a.target), long_text(a.result), e(a.client or "")]
            for a in entries]
    kept = {k: v for k, v in (("actor", actor), ("action", action)) if v}
    more = link("/audit", "older entries →", {**kept, "page": str(number + 1)}) if len(entries) == 100 else ""
    filters = ('<form method="get" action="/audit" class="filters" aria-label="filter the audit log">'
               + field("Who", "actor", actor) + field("Action", "action", action,
                                                      extra='placeholder="reveal, release, login…"')
               + button("Filter") + "</form>")
    body = filters + table(["When", "Who", "Action", "Target", "Result", "From"], rows,
                           caption=f"{console.audit.count()} entries in all, newest first",
                           empty="Nothing recorded (with these filters).") + (f"<p>{more}</p>" if more else "")
    return html_response(page("Audit log", body, account=session.account, csrf=session.csrf, current="/audit"))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", overview)
    app.router.add_get("/peers", peers_page)
    app.router.add_post("/peers/approve", approve)
    app.router.add_post("/peers/reject", reject)
    app.router.add_get("/verdicts", verdicts_page)
    app.router.add_post("/verdicts/retract", retract_verdict)
    app.router.add_get("/evidence", evidence_page)
    app.router.add_get(r"/evidence/{id:\d+}", evidence_record)
    app.router.add_get(r"/evidence/{id:\d+}.json", evidence_json)
    app.router.add_get("/audit", audit_page)
