"""The exchange feed and its tokens (node/banks/exchange.py, tokens.py), and the verdict_tx extension's
handling of what a node answers: every request authenticated, only token hashes stored, cursor pages of
bounded size, oldest first, with deletions; only own csam verdicts, never a peer's; a remote node's junk
never taken as data."""
from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from node.banks import Banks
from node.banks.exchange import MAX_PAGE
from node.banks.tokens import ExchangeTokens
from node.tokens import token_sha256
from node.migrations import MIGRATIONS
from node.store import Store
from protocol.keys import generate_ed25519
from tests.multinode import synthetic_verdict
from tests.node_helpers import make_data_dir, run, running_node


def test_tokens_store_only_hashes_and_revocation_is_immediate(tmp_path):
    with Store(tmp_path / "db.sqlite") as store:
        tokens = ExchangeTokens(store)
        token = tokens.add("hma")
        assert token.startswith("vnx_") and len(token) > 40
        dumped = "\n".join(store.conn.iterdump())
        assert token not in dumped and token_sha256(token) in dumped
        with pytest.raises(ValueError, match="exists"):
            tokens.add("hma")
        with pytest.raises(ValueError, match="token name"):
            tokens.add("no spaces")
        other = tokens.add("pytx")
        assert tokens.authenticate(token) == "hma" and tokens.authenticate(other) == "pytx"
        for wrong in (None, "", token[:-1], token + "x", "vnw_" + token[4:], "vnx_" + "a" * 300, token.upper()):
            assert tokens.authenticate(wrong) is None
        assert tokens.remove("hma") and not tokens.remove("hma")
        assert tokens.authenticate(token) is None and tokens.authenticate(other) == "pytx"
        assert [r.name for r in tokens.records()] == ["pytx"]


async def _get(session: aiohttp.ClientSession, url: str, token: str | None = None,
               **headers: str) -> tuple[int, Any, Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with session.get(url, headers=headers) as response:
        return response.status, (await response.json()), response.headers


def test_every_request_is_authenticated_and_pages_are_bounded(tmp_path):
    config = make_data_dir(tmp_path / "node")

    async def body():
        async with running_node(config) as (node, base):
            token = ExchangeTokens(node.store).add("reader")
            url = f"{base}/exchange/v1/signals"
            async with aiohttp.ClientSession() as session:
                for headers in ({}, {"Authorization": token}, {"Authorization": f"Basic {token}"},
                                {"Authorization": "Bearer vnx_wrong"}):
                    status, answer, response_headers = await _get(session, url, **headers)
                    assert status == 401 and "token" in answer["error"]
                    assert response_headers["WWW-Authenticate"].startswith("Bearer")
                status, _, _ = await _get(session, f"{url}?token={token}")
                assert status == 401   # a token in the URL ends up in logs: not accepted
                status, page, _ = await _get(session, url, token)
                assert status == 200 and page == {"node": node.actor_id, "entries": [], "cursor": 0, "more": False}
                for query in (f"limit={MAX_PAGE + 1}", "limit=0", "since=-1", "since=abc", "since=%C2%B2",
                              "since=" + "9" * 30):
                    status, answer, _ = await _get(session, f"{url}?{query}", token)
                    assert status == 400, query
    run(body())


def test_the_feed_pages_own_csam_verdicts_oldest_first_with_deletions(tmp_path):
    config = make_data_dir(tmp_path / "node")

    async def body():
        async with running_node(config) as (node, base):
            key = node.ed25519_key
            own_csam = []
            for i in range(1205):
                verdict, doc = synthetic_verdict(node.actor_id, key, i, csam=0.9)
                node.add_verdict(verdict, doc, own=True)
                own_csam.append(verdict)
                if i % 100 == 0:   # safe verdicts of ours and a peer's csam verdict stay out
                    safe, safe_doc = synthetic_verdict(node.actor_id, key, 100_000 + i, csam=0.1)
                    node.add_verdict(safe, safe_doc, own=True)
                    theirs, their_doc = synthetic_verdict("https://peer.example/actor", generate_ed25519(), i,
                                                          csam=0.99)
                    node.add_verdict(theirs, their_doc, own=False)
            token = ExchangeTokens(node.store).add("reader")
            seen, cursor, pages = [], 0, 0
            async with aiohttp.ClientSession() as session:
                while True:
                    status, page, _ = await _get(session, f"{base}/exchange/v1/signals?since={cursor}", token)
                    assert status == 200 and len(page["entries"]) <= 500
                    seen += page["entries"]
                    cursor, pages = page["cursor"], pages + 1
                    if not page["more"]:
                        break
                assert pages == 3 and [e["id"] for e in seen] == [v.id for v in own_csam]
                assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
                first = seen[0]
                assert first["signals"] == {"md5": own_csam[0].fingerprint.md5} and first["change"] == "add"
                assert set(first) == {"seq", "change", "id", "label", "published", "logged_at", "signals"}
                node.retract_verdict(own_csam[7].id, "false positive")
                status, page, _ = await _get(session, f"{base}/exchange/v1/signals?since={cursor}", token)
                assert [(e["change"], e["id"]) for e in page["entries"]] == [("delete", own_csam[7].id)]
                status, again, _ = await _get(session, f"{base}/exchange/v1/signals?since={page['cursor']}", token)
                assert again["entries"] == [] and again["cursor"] == page["cursor"]
            assert node.features.get(Banks) is not None
    run(body())


def test_the_migration_logs_csam_verdicts_signed_before_the_feed_existed(tmp_path):
    path = tmp_path / "db.sqlite"
    names = [m.name for m in MIGRATIONS]
    key = generate_ed25519()
    with Store(path, migrations=MIGRATIONS[:names.index("exchange feed")]) as store:
        for i, csam in enumerate((0.9, 0.1, 0.8)):
            verdict, doc = synthetic_verdict("https://us.example/actor", key, i, csam=csam)
            store.insert_verdict(verdict, doc, own=True)
    with Store(path) as store:
        logged = store.conn.execute("SELECT verdict_rowid, change FROM exchange_log ORDER BY seq").fetchall()
        assert logged == [(1, "add"), (3, "add")]


# -- the verdict_tx extension against a hostile node ----------------------------------------------------

class _Response:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self._body = body
        self.text = body if isinstance(body, str) else json.dumps(body)

    def json(self) -> Any:
        if isinstance(self._body, str):
            raise ValueError("not JSON")
        return self._body


class _Session:
    """Answers the extension's requests with the given pages, in order."""

    def __init__(self, *answers: _Response) -> None:
        self.answers = list(answers)
        self.asked: list[dict] = []

    def get(self, url: str, params: dict, timeout: float, headers: dict) -> _Response:
        self.asked.append({"url": url, **params, "auth": headers["Authorization"]})
        return self.answers.pop(0)


def _api(session: _Session):
    from verdict_tx.api import VerdictNodeCollabConfig, VerdictNodeSignalExchangeAPI

    collab = VerdictNodeCollabConfig(url="https://node.example/", name="vn", api="verdict_node", enabled=True)
    return VerdictNodeSignalExchangeAPI(collab, "vnx_secret", session=session)


def _add(seq: int, **signals: str) -> dict:
    return {"seq": seq, "change": "add", "id": f"https://node.example/verdicts/{seq}", "label": "csam",
            "published": "2026-01-01T00:00:00Z", "logged_at": 1000 + seq, "signals": signals}


def test_the_extension_follows_the_cursor_and_drops_malformed_entries():
    pytest.importorskip("threatexchange")
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal
    from verdict_tx.signals import PhotoMD5Signal

    pdq, md5 = "ab" * 32, "cd" * 16
    session = _Session(
        _Response(200, {"entries": [_add(1, pdq=pdq, md5=md5), "junk", {"change": "add"},
                                    _add(2, pdq="not a pdq", md5=md5.upper())], "cursor": 2, "more": True}),
        _Response(200, {"entries": [{"seq": 3, "change": "delete", "id": "https://node.example/verdicts/2",
                                     "logged_at": 1003}], "cursor": 3, "more": False}))
    deltas = list(_api(session).fetch_iter([PdqSignal, PhotoMD5Signal], None))
    assert [d.checkpoint.cursor for d in deltas] == [2, 3] and deltas[-1].checkpoint.get_progress_timestamp() == 1003
    assert [a["since"] for a in session.asked] == [0, 2] and session.asked[0]["auth"] == "Bearer vnx_secret"
    assert session.asked[0]["url"] == "https://node.example/exchange/v1/signals"
    first, second = deltas
    assert set(first.updates) == {"https://node.example/verdicts/1", "https://node.example/verdicts/2"}
    assert second.updates == {"https://node.example/verdicts/2": None}

    merged: dict = {}
    api_cls = type(_api(session))
    for delta in deltas:
        api_cls.naive_fetch_merge(merged, delta.updates)
    with_photo = api_cls.naive_convert_to_signal_type([PdqSignal, PhotoMD5Signal], None, merged)
    assert {st.get_name(): set(v) for st, v in with_photo.items()} == {"pdq": {pdq}, "photo_md5": {md5}}
    record = with_photo[PdqSignal][pdq]
    assert {o.category.name for o in record.get_as_opinions()} == {"POSITIVE_CLASS"} and str(record) == \
        "POSITIVE_CLASS csam"
    without = api_cls.naive_convert_to_signal_type([PdqSignal, VideoMD5Signal], None, merged)
    assert set(without[VideoMD5Signal]) == {md5}   # no photo_md5 type installed (plain HMA): video_md5


@pytest.mark.parametrize("answer, problem", [
    (_Response(401, {"error": "no"}), "refused the token"),
    (_Response(500, "oops"), "answered 500"),
    (_Response(200, "<html>"), "did not answer JSON"),
    (_Response(200, {"entries": {}, "cursor": 1, "more": False}), "did not answer a feed page"),
    (_Response(200, {"entries": [], "cursor": -1, "more": False}), "did not answer a feed page"),
    (_Response(200, {"entries": [], "cursor": 5, "more": "yes"}), "did not answer a feed page"),
    (_Response(200, {"entries": [], "cursor": 4, "more": False}), "did not move forward"),
    (_Response(200, {"entries": [], "cursor": 5, "more": True}), "did not move forward"),
])
def test_the_extension_refuses_what_is_not_a_feed(answer, problem):
    pytest.importorskip("threatexchange")
    from threatexchange.exchanges.auth import SignalExchangeAPIInvalidAuthException
    from verdict_tx.api import VerdictNodeCheckpoint

    with pytest.raises((RuntimeError, SignalExchangeAPIInvalidAuthException)) as info:
        list(_api(_Session(answer)).fetch_iter([], VerdictNodeCheckpoint(cursor=5)))
    assert problem in str(getattr(info.value, "message", info.value))
