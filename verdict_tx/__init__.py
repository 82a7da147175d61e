"""A python-threatexchange extension that reads a verdict-node's exchange feed, so that the `threatexchange`
CLI and Hasher-Matcher-Actioner (HMA) fetch a node's block verdicts as PDQ and MD5 signals and match them.

    threatexchange config extensions add verdict_tx
    threatexchange config collab edit verdict_node NAME --create --url https://node.example [--token-file FILE]
    threatexchange fetch
    threatexchange match photo image.jpg

HMA lists ``VerdictNodeSignalExchangeAPI`` among its exchange types (and ``PhotoMD5Signal`` among its signal
types, or MD5s arrive as python-threatexchange's ``video_md5``). The reader's token comes from the collab's
``token_file``, else VERDICT_NODE_EXCHANGE_TOKEN, else ~/.verdict_node_exchange_token (README, Exchange for
HMA / python-threatexchange).

This package imports python-threatexchange and nothing of verdict-node: it runs wherever pytx or HMA runs.
"""
from __future__ import annotations

from threatexchange.extensions.manifest import ThreatExchangeExtensionManifest

from verdict_tx.api import VerdictNodeSignalExchangeAPI
from verdict_tx.signals import PhotoMD5Signal

TX_MANIFEST = ThreatExchangeExtensionManifest(signal_types=(PhotoMD5Signal,), apis=(VerdictNodeSignalExchangeAPI,))

__all__ = ["TX_MANIFEST", "PhotoMD5Signal", "VerdictNodeSignalExchangeAPI"]
