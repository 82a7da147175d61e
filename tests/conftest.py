"""Shared pytest set-up. Fixtures of one area live in that area's helper module (tests/*_servers.py,
tests/images.py, tests/hostile.py) and are imported by the tests that use them."""
import os

# Nothing in the tests may reach a model hub: weights come from files the tests make.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every test node lives on 127.0.0.1: let stranger fetches (open follow requests) reach loopback, and only
# loopback. The tests of that guard itself clear this for their own nodes.
os.environ.setdefault("VERDICT_NODE_TEST_ALLOW_LOOPBACK", "1")
