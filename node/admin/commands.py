"""`verdict-node admin add|list|remove`: the review console's accounts. They act on the database; a
running console sees the change at the next request (a removed account's sessions end at once)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from node.admin.accounts import AccountError, Accounts
from node.datadir import resolve_config
from node.store import Store


def console_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    return f"http://{host}:{port}/"


def cmd_admin(args: argparse.Namespace) -> int:
    config = resolve_config(args.config)
    store = Store(config.database_path)
    try:
        accounts = Accounts(store)
        if args.admin_command == "add":
            try:
                password = accounts.add(args.name)
            except AccountError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"account {args.name} added; its one-time password (shown only now, only its hash is kept):")
            print(password)
            where = console_url(config.admin.listen)
            state = "" if config.admin.enabled else " once admin.enabled is true in node.yaml"
            print(f"log in at {where}{state}; the first login asks for a new password", file=sys.stderr)
            return 0
        if args.admin_command == "ensure":
            where = console_url(config.admin.listen)
            if accounts.any():
                names = ", ".join(a.name for a in accounts.list())
                print(f"review console: {where} (log in as {names}; `verdict-node admin add NAME` for another "
                      f"account; a lost password: `verdict-node admin remove NAME`, then add it again)")
                return 0
            password = accounts.add(args.name)
            print(f"review console: {where}\n  log in as {args.name} with the one-time password {password}\n"
                  f"  (shown only now; the first login asks for a new one)")
            return 0
        if args.admin_command == "list":
            rows = accounts.list()
            if args.json:
                print(json.dumps([{"name": a.name, "created_at": a.created_at, "must_change": a.must_change,
                                   "last_login_at": a.last_login_at, "sessions": a.sessions} for a in rows], indent=2))
            elif not rows:
                print("no accounts: add one with `verdict-node admin add NAME`")
            for a in rows if not args.json else []:
                state = "one-time password not yet changed" if a.must_change else "password set"
                last = "never" if a.last_login_at is None else \
                    time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(a.last_login_at))
                print(f"{a.name}  {state}  sessions: {a.sessions}  last login: {last}")
            return 0
        try:
            ended = accounts.remove(args.name)
        except AccountError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"removed account {args.name}; {ended} session(s) ended")
        return 0
    finally:
        store.close()
