"""`verdict-node attribute SHA256`, `verdict-node attribution purge|actions` and `verdict-node evidence
export|list`.

They work on the data directory whether or not `serve` runs: `attribute` asks pict-rs and the instance
databases itself (and refreshes the cache a running server reads), `purge` is the explicit admin action,
recorded in the database, and the evidence commands read the core's evidence records, filling in a missing
attribution on request.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
import time
from typing import Any

from node.attribution import open_attributor
from node.attribution.records import AttributionRecords
from node.attribution.service import AttributionService
from node.datadir import resolve_config
from node.evidence import EvidenceRecords, render_export
from node.hooks import Attribution
from node.store import Store

EXIT_REFUSED = 1
_SHA256 = re.compile(r"[0-9a-fA-F]{64}\Z")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _person(person: dict[str, Any] | None) -> str:
    if not person:
        return "unknown"
    extra = [person.get("actor_url") or "no actor URL"]
    if person.get("created_at"):
        extra.append(f"account created {person['created_at'][:10]}")
    if person.get("deleted"):
        extra.append("ACCOUNT DELETED")
    return f"{person.get('name')} ({', '.join(extra)})"


def render_report(attribution: Attribution) -> str:
    """The readable report `attribute` prints."""
    d = attribution.details
    out = [f"sha256 {d.get('sha256')}", f"looked up {_when(attribution.looked_up_at)}", "",
           attribution.summary, ""]
    pictrs = d.get("pictrs")
    if pictrs is not None:
        aliases = pictrs.get("aliases") or []
        out.append(f"pict-rs aliases: {', '.join(aliases) if aliases else 'none found'}")
        if pictrs.get("identifier"):
            out.append(f"  stored as: {pictrs['identifier']}")
        if pictrs.get("created_at"):
            out.append(f"  first stored: {pictrs['created_at']}")
        if pictrs.get("searched_pages"):
            out.append(f"  (not among the newest {pictrs['searched_pages']} pages of pict-rs's hashes)")
    lemmy = d.get("lemmy")
    if lemmy is not None:
        out.append(f"Lemmy {lemmy.get('version')}:")
        for upload in lemmy.get("uploads") or []:
            if upload.get("federated_thumbnail"):
                remote = upload.get("remote_post") or {}
                out.append(f"  {upload['alias']}: federated thumbnail of {remote.get('ap_id') or 'an unknown post'}"
                           f" (fetched {upload.get('uploaded_at')})")
            else:
                out.append(f"  {upload['alias']}: uploaded {upload.get('uploaded_at')} by {_person(upload.get('uploader'))}")
        if not lemmy.get("uploads"):
            out.append("  no upload of these aliases")
        for post in lemmy.get("posts") or []:
            state = "".join(f" [{s}]" for s in ("deleted", "removed") if post.get(s))
            out.append(f"  post {post['post_id']} {post.get('title')!r} ({', '.join(post.get('via') or [])}) by "
                       f"{_person(post.get('creator'))}: {post.get('ap_id')}{state}")
        for comment in lemmy.get("comments") or []:
            state = "".join(f" [{s}]" for s in ("deleted", "removed") if comment.get(s))
            out.append(f"  comment {comment['comment_id']} on post {comment.get('post_id')} by "
                       f"{_person(comment.get('creator'))}: {comment.get('ap_id')}{state}")
        if not lemmy.get("posts") and not lemmy.get("comments"):
            out.append("  no post or comment uses them")
        if not lemmy.get("text_searched"):
            out.append("  (post bodies and comments not searched: --search-text)")
    for media in d.get("mastodon") or []:
        if not media.get("found"):
            out.append(f"Mastodon: no media attachment {media['attachment_id']} (from the path {media['path']})")
            continue
        account = media.get("account") or {}
        status = media.get("status") or {}
        out.append(f"Mastodon media attachment {media['attachment_id']} ({media.get('content_type')}, "
                   f"{'cached remote media' if media.get('cached_remote') else 'uploaded here'}):")
        out.append(f"  account {account.get('handle')} ({account.get('url') or 'no public link'}, created "
                   f"{(account.get('created_at') or '')[:10]})")
        out.append(f"  status {status.get('url') or 'none'}")
    for problem in attribution.problems:
        out.append(f"problem: {problem}")
    return "\n".join(out).rstrip() + "\n"


def _attributor(config: Any, store: Store) -> AttributionService | None:
    service = open_attributor(config, store)
    if service is None:
        print("error: nothing to attribute with: node.yaml has no attribution section with a Lemmy or Mastodon "
              "database, a pict-rs API or a Lemmy API (see README, Attribution and evidence)", file=sys.stderr)
    return service


def cmd_attribute(args: argparse.Namespace) -> int:
    if not _SHA256.match(args.sha256):
        return _error(f"{args.sha256!r} is not a sha256 (64 hex digits)")
    config = resolve_config(args.config)
    source = args.source or ("pictrs" if args.path and not args.path.count("/") else None)

    async def main(store: Store) -> int:
        service = _attributor(config, store)
        if service is None:
            return 2
        try:
            result = await service.attribute(args.sha256, source=source, key=args.path, refresh=args.refresh,
                                             search_text=args.search_text)
        finally:
            await service.close()
        if args.json:
            print(json.dumps({"found": result.found, "summary": result.summary, "looked_up_at": result.looked_up_at,
                              "problems": list(result.problems), "details": result.details}, indent=2, sort_keys=True))
        else:
            sys.stdout.write(render_report(result))
        return 0 if result.found or not result.problems else EXIT_REFUSED

    with Store(config.database_path) as store:
        return asyncio.run(main(store))


def _actor(args: argparse.Namespace) -> str:
    return args.actor or os.environ.get("SUDO_USER") or getpass.getuser()


def cmd_attribution(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    with Store(config.database_path) as store:
        if args.attribution_command == "actions":
            actions = AttributionRecords(store).actions(args.limit)
            if args.json:
                print(json.dumps(actions, indent=2))
                return 0
            if not actions:
                print("no admin actions taken")
            for a in actions:
                verb = "delete" if a["kind"] == "image" else "purge"
                print(f"{_when(a['at'])}  {a['actor']}: {verb} {a['kind']} {a['target']} ({a['reason']}): "
                      f"{'done' if a['ok'] else 'NOT DONE'}: {a['answer']}")
            return 0

        async def purge() -> int:
            service = _attributor(config, store)
            if service is None:
                return 2
            try:
                if args.kind == "image":
                    line = await service.delete_image(args.target, reason=args.reason, actor=_actor(args))
                elif not args.target.isdigit():
                    return _error(f"a {args.kind} is named by Lemmy's id (a number), got {args.target!r}")
                else:
                    line = await service.purge(args.kind, int(args.target), reason=args.reason, actor=_actor(args))
            except ValueError as exc:
                return _error(str(exc))
            finally:
                await service.close()
            done = AttributionRecords(store).actions(1)[0]["ok"]
            print(line, file=sys.stdout if done else sys.stderr)
            return 0 if done else EXIT_REFUSED

        return asyncio.run(purge())


def cmd_evidence(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    with Store(config.database_path) as store:
        evidence = EvidenceRecords(store, config.evidence.retain_days)
        if args.evidence_command == "list":
            records = evidence.list(limit=args.limit)
            if not records:
                print("no evidence records (a positive is recorded when an admin confirms it)")
            for r in records:
                attributed = (r.get("attribution") or {}).get("summary") or "not attributed yet"
                print(f"{r['id']:>5}  {_when(r['reviewed_at'])}  {r['sha256'][:16]}…  {r['source']} {r['key'] or '-'}"
                      f"  by {r['reviewer']}, kept until {_when(r['retain_until'])[:10]}: {attributed}")
            return 0
        if args.attribute:
            asyncio.run(_attribute_missing(config, store, evidence))
        text = render_export(evidence.every(), args.format)
    if args.output:
        # 0600 from the first byte: the file names uploaders (O_EXCL-free, so an old export is replaced).
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        print(f"{args.output}: {evidence_count(text, args.format)} evidence record(s)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def evidence_count(text: str, fmt: str) -> int:
    return len(json.loads(text)) if fmt == "json" else max(0, text.count("\n") - 1)


async def _attribute_missing(config: Any, store: Store, evidence: EvidenceRecords) -> None:
    """Look up the attribution of records that have none (``export --attribute``)."""
    service = open_attributor(config, store)
    if service is None:
        print("note: no attribution configured: records without one are exported without it", file=sys.stderr)
        return
    try:
        while True:
            missing = [r for r in evidence.unattributed(limit=100)]
            attached = 0
            for record in missing:
                result = await service.attribute(record["sha256"], source=record["source"], key=record["key"] or None,
                                                 seen_at=record["stored_at"] or record["created_at"])
                if result.problems:
                    print(f"note: evidence record {record['id']}: {'; '.join(result.problems)}", file=sys.stderr)
                    continue
                evidence.attach_attribution(record["id"], {"summary": result.summary, "found": result.found,
                                                           **result.details}, result.looked_up_at)
                attached += 1
            if attached == 0 or len(missing) < 100:
                return
    finally:
        await service.close()
