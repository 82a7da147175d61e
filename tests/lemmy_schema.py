"""Lemmy 0.19 and 1.0 and a Mastodon subset, as the tables the attribution feature reads, with the same data
in each: an image alice uploaded (used by two posts and a comment), a federated thumbnail of a remote post,
an image of a deleted user, and an upload nothing uses. Only the columns named in each project's schema that
attribution needs (and a few around them) are made; constraints are left out.

``READ_ONLY_GRANTS`` is the role README tells admins to create, run here as written there.
"""
from __future__ import annotations

LEMMY = "https://lemmy.example"
REMOTE = "https://remote.example"

# The aliases pict-rs gave (what Lemmy stores as local_image.pictrs_alias and in image URLs).
ALICE_ALIAS = "3f1c2a9b-0d7e-4c1a-9b2e-aa01.png"
THUMB_ALIAS = "8e2d44c1-5b6a-47f0-8d3c-bb02.jpeg"
DELETED_ALIAS = "c0ffee00-1111-2222-3333-cc03.webp"
UNUSED_ALIAS = "d00d0000-4444-5555-6666-dd04.png"


def _people(actor_column: str, published_column: str) -> str:
    """The same four people in either schema (the columns were renamed in 1.0)."""
    return f"""
INSERT INTO person (id, name, {actor_column}, local, {published_column}, deleted) VALUES
    (1, 'alice', '{LEMMY}/u/alice', true, '2024-01-02T03:04:05Z', false),
    (2, 'bob', '{LEMMY}/u/bob', true, '2024-02-01T00:00:00Z', false),
    (3, 'carol', '{REMOTE}/u/carol', false, '2023-06-01T00:00:00Z', false),
    (4, 'mallory', '{LEMMY}/u/mallory', true, '2024-03-01T00:00:00Z', true);
INSERT INTO local_user (id, person_id, password_encrypted) VALUES (11, 1, 'x'), (12, 2, 'x'), (14, 4, 'x');
"""


def _posts_and_comments(published_column: str) -> str:
    """The same posts and comments in either schema: two posts and a comment use alice's image."""
    return f"""
INSERT INTO post (id, name, url, thumbnail_url, creator_id, body, ap_id, local, {published_column}) VALUES
    (101, 'first use', '{LEMMY}/pictrs/image/{ALICE_ALIAS}', NULL, 1, NULL, '{LEMMY}/post/101', true,
        '2024-05-01T10:01:00Z'),
    (102, 'crosspost', 'https://elsewhere.example/article', '{LEMMY}/pictrs/image/{ALICE_ALIAS}?format=webp', 2,
        'see link', '{LEMMY}/post/102', true, '2024-05-01T11:00:00Z'),
    (103, 'remote post', 'https://news.example/story', '{LEMMY}/pictrs/image/{THUMB_ALIAS}', 3, NULL,
        '{REMOTE}/post/77', false, '2024-05-02T10:00:00Z'),
    (104, 'deleted user post', '{LEMMY}/pictrs/image/{DELETED_ALIAS}', NULL, 4, NULL, '{LEMMY}/post/104', true,
        '2024-05-03T10:01:00Z'),
    (105, 'unrelated', 'https://other.example/x{ALICE_ALIAS}', NULL, 2, 'nothing here', '{LEMMY}/post/105', true,
        '2024-05-05T00:00:00Z');
INSERT INTO comment (id, content, creator_id, post_id, ap_id, {published_column}) VALUES
    (201, 'look ![img]({LEMMY}/pictrs/image/{ALICE_ALIAS}) again', 2, 101, '{LEMMY}/comment/201',
        '2024-05-01T12:00:00Z'),
    (202, 'plain text', 1, 101, '{LEMMY}/comment/202', '2024-05-01T12:30:00Z');
"""


LEMMY_019 = f"""
CREATE TABLE person (id serial PRIMARY KEY, name text NOT NULL, display_name text, actor_id text NOT NULL,
    local boolean NOT NULL DEFAULT true, published timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false,
    banned boolean NOT NULL DEFAULT false);
CREATE TABLE local_user (id serial PRIMARY KEY, person_id int NOT NULL, password_encrypted text NOT NULL,
    email text);
CREATE TABLE local_image (pictrs_alias text PRIMARY KEY, local_user_id int NULL, pictrs_delete_token text NOT NULL,
    published timestamptz NOT NULL DEFAULT now());
CREATE TABLE post (id serial PRIMARY KEY, name text NOT NULL, url text, thumbnail_url text, creator_id int NOT NULL,
    community_id int NOT NULL DEFAULT 1, body text, ap_id text NOT NULL, local boolean NOT NULL DEFAULT true,
    published timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false, removed boolean NOT NULL DEFAULT false);
CREATE TABLE comment (id serial PRIMARY KEY, content text NOT NULL, creator_id int NOT NULL, post_id int NOT NULL,
    ap_id text NOT NULL, local boolean NOT NULL DEFAULT true, published timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false, removed boolean NOT NULL DEFAULT false);

""" + _people("actor_id", "published") + f"""
INSERT INTO local_image (pictrs_alias, local_user_id, pictrs_delete_token, published) VALUES
    ('{ALICE_ALIAS}', 11, 'tok1', '2024-05-01T10:00:00Z'),
    ('{THUMB_ALIAS}', NULL, 'tok2', '2024-05-02T10:00:00Z'),
    ('{DELETED_ALIAS}', 14, 'tok3', '2024-05-03T10:00:00Z'),
    ('{UNUSED_ALIAS}', 12, 'tok4', '2024-05-04T10:00:00Z');
""" + _posts_and_comments("published")

# Lemmy 1.0: local_image names the person and the post a thumbnail is for; timestamps are *_at and the
# actor URL of a person is ap_id.
LEMMY_10 = f"""
CREATE TABLE person (id serial PRIMARY KEY, name text NOT NULL, display_name text, ap_id text NOT NULL,
    local boolean NOT NULL DEFAULT true, published_at timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false);
CREATE TABLE local_user (id serial PRIMARY KEY, person_id int NOT NULL, password_encrypted text NOT NULL);
CREATE TABLE local_image (pictrs_alias text PRIMARY KEY, published_at timestamptz NOT NULL DEFAULT now(),
    person_id int NULL, thumbnail_for_post_id int NULL);
CREATE TABLE post (id serial PRIMARY KEY, name text NOT NULL, url text, thumbnail_url text, creator_id int NOT NULL,
    body text, ap_id text NOT NULL, local boolean NOT NULL DEFAULT true, published_at timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false, removed boolean NOT NULL DEFAULT false);
CREATE TABLE comment (id serial PRIMARY KEY, content text NOT NULL, creator_id int NOT NULL, post_id int NOT NULL,
    ap_id text NOT NULL, local boolean NOT NULL DEFAULT true, published_at timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false, removed boolean NOT NULL DEFAULT false);

""" + _people("ap_id", "published_at") + f"""
INSERT INTO local_image (pictrs_alias, person_id, thumbnail_for_post_id, published_at) VALUES
    ('{ALICE_ALIAS}', 1, NULL, '2024-05-01T10:00:00Z'),
    ('{THUMB_ALIAS}', NULL, 103, '2024-05-02T10:00:00Z'),
    ('{DELETED_ALIAS}', 4, NULL, '2024-05-03T10:00:00Z'),
    ('{UNUSED_ALIAS}', 2, NULL, '2024-05-04T10:00:00Z');
""" + _posts_and_comments("published_at")

MASTODON_HOST = "https://mastodon.example"
LOCAL_MEDIA_ID = 109876543210987654
REMOTE_MEDIA_ID = 110000000000000042
LOCAL_MEDIA_KEY = "media_attachments/files/109/876/543/210/987/654/original/abc123.png"
REMOTE_MEDIA_KEY = "cache/media_attachments/files/110/000/000/000/000/042/small/remote.jpg"

MASTODON = f"""
CREATE TABLE accounts (id bigint PRIMARY KEY, username text NOT NULL, domain text NULL, url text,
    uri text NOT NULL DEFAULT '', created_at timestamp NOT NULL, suspended_at timestamp NULL);
CREATE TABLE statuses (id bigint PRIMARY KEY, uri text, url text, text text NOT NULL DEFAULT '',
    account_id bigint NOT NULL, created_at timestamp NOT NULL, deleted_at timestamp NULL);
CREATE TABLE media_attachments (id bigint PRIMARY KEY, status_id bigint NULL, account_id bigint NULL,
    remote_url text NOT NULL DEFAULT '', file_file_name text, file_content_type text, type int NOT NULL DEFAULT 0,
    created_at timestamp NOT NULL);

INSERT INTO accounts (id, username, domain, url, uri, created_at) VALUES
    (1, 'dana', NULL, NULL, '', '2023-01-01 00:00:00'),
    (2, 'erin', 'remote.example', 'https://remote.example/@erin', 'https://remote.example/users/erin',
        '2023-02-02 00:00:00');
INSERT INTO statuses (id, uri, url, account_id, created_at) VALUES
    (500, '{MASTODON_HOST}/users/dana/statuses/500', '{MASTODON_HOST}/@dana/500', 1, '2024-06-01 00:00:00'),
    (600, 'https://remote.example/users/erin/statuses/9', 'https://remote.example/@erin/9', 2, '2024-06-02 00:00:00');
INSERT INTO media_attachments (id, status_id, account_id, remote_url, file_file_name, file_content_type, type,
        created_at) VALUES
    ({LOCAL_MEDIA_ID}, 500, 1, '', 'abc123.png', 'image/png', 0, '2024-06-01 00:00:00'),
    ({REMOTE_MEDIA_ID}, 600, 2, 'https://remote.example/media/remote.jpg', 'remote.jpg', 'image/jpeg', 0,
        '2024-06-02 00:00:00');
"""


def read_only_grants(database: str, tables: tuple[str, ...], password: str, *, create_role: bool = True) -> str:
    """README's read-only role, word for word apart from the names (a role is the cluster's: made once)."""
    create = f"CREATE ROLE verdict_node_ro LOGIN PASSWORD '{password}';\n" if create_role else ""
    return (create + f'GRANT CONNECT ON DATABASE "{database}" TO verdict_node_ro;\n'
            "GRANT USAGE ON SCHEMA public TO verdict_node_ro;\n"
            f"GRANT SELECT ON {', '.join(tables)} TO verdict_node_ro;\n")


LEMMY_TABLES = ("local_image", "local_user", "person", "post", "comment")
MASTODON_TABLES = ("media_attachments", "accounts", "statuses")
