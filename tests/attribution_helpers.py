"""What the attribution tests share: the instance databases (Lemmy 0.19, Lemmy 1.0, Mastodon) in the session's
PostgreSQL cluster, made once per session and granted to README's read-only role."""
from __future__ import annotations

import secrets

import pytest

from tests import lemmy_schema as schema
from tests.postgres_server import postgres_server  # noqa: F401 - the session's cluster

RO_PASSWORD = "ro-" + secrets.token_hex(6)


@pytest.fixture(scope="session")
def databases(postgres_server):  # noqa: F811
    """One database per schema (made once per session), each granted to the read-only role."""
    server = postgres_server
    made = {}
    for name, sql, tables in (("lemmy019", schema.LEMMY_019, schema.LEMMY_TABLES),
                              ("lemmy10", schema.LEMMY_10, schema.LEMMY_TABLES),
                              ("mastodon", schema.MASTODON, schema.MASTODON_TABLES)):
        db = server.create_database(name)
        server.execute(sql, db)
        made[name] = db
    server.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'verdict_node_ro') THEN "
                   f"CREATE ROLE verdict_node_ro LOGIN PASSWORD '{RO_PASSWORD}'; END IF; END $$")
    server.execute(f"ALTER ROLE verdict_node_ro PASSWORD '{RO_PASSWORD}'")
    for name, db in made.items():
        tables = schema.MASTODON_TABLES if name == "mastodon" else schema.LEMMY_TABLES
        for statement in schema.read_only_grants(db, tables, RO_PASSWORD, create_role=False).splitlines():
            server.execute(statement, db)
    return {name: server.url(db, user="verdict_node_ro", password=RO_PASSWORD) for name, db in made.items()}


