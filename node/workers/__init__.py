"""Remote GPU workers: a GPU-less node sends classification to `verdict-node worker` processes elsewhere.

  wire      the lease and result formats, and the frame reduction both sides agree on (pure)
  queue     images waiting for workers, leases, expiry, requeueing
  registry  worker tokens (only their hashes stored) and what each worker did; the submit secret
  hub       what this node knows of its workers; lease and job expiry
  api       the /workers/v1 routes workers and sibling commands call
  backends  what the pipeline calls instead of the local classifier (WorkerBackend, SubmitBackend)
  client    the worker process itself (the GPU side)
  commands  `verdict-node worker` and `verdict-node workers add|list|remove`
"""
from __future__ import annotations

import json
import logging
import urllib.request

from node.config import ConfigError, is_model_none
from node.datadir import local_base_url
from node.runtime import Node
from node.workers.api import WorkerApi
from node.workers.backends import SubmitBackend, WorkerBackend, expected_model
from node.workers.hub import WorkerHub
from node.workers.registry import ensure_submit_token, submit_token_path
from node.workers.wire import API_PREFIX, Geometry, describe_model, model_from_json, same_model
from protocol.errors import ProtocolError
from protocol.verdict import ModelInfo
from scanners.classifier import ModelUnavailable

log = logging.getLogger("verdict_node.workers")


def _workers_model(node: Node) -> tuple[str, ModelInfo]:
    """(the spec workers must run, its ModelInfo); ConfigError when node.yaml does not say or disagrees with
    the local classifier (verdicts of one node come from one model)."""
    settings, local = node.config.workers, node.backend
    classifier_spec = node.config.classifier.model
    spec = settings.model or (None if is_model_none(classifier_spec) else classifier_spec)
    if spec is None:
        raise ConfigError("node.yaml: workers.model: required when classifier.model is none "
                          "(the classifier spec the workers run, e.g. ViT-L-14/openai)")
    if local is not None and settings.model is None:
        return spec, local.model
    try:
        model = expected_model(spec)
    except ModelUnavailable as exc:
        raise ConfigError(f"node.yaml: workers.model: cannot tell which model {spec!r} is: {exc}") from None
    if local is not None and not same_model(local.model, model):
        raise ConfigError(f"node.yaml: workers.model: {describe_model(model)} differs from the local classifier "
                          f"{describe_model(local.model)}; verdicts of one node come from one model")
    return spec, model


def install(node: Node) -> WorkerHub | None:
    """For `serve`, with ``workers.enabled``: the node's inference backend becomes a WorkerBackend (over the
    local classifier, if one loaded) and the worker routes are served."""
    settings = node.config.workers
    if not settings.enabled:
        return None
    spec, model = _workers_model(node)
    hub = WorkerHub(node.store, settings, model, spec=spec)
    hub.add_metrics(node.metrics.registry)
    hub.submit_token = ensure_submit_token(submit_token_path(node.config))
    backend = WorkerBackend(hub, node.backend, local_after_s=settings.local_after_ms / 1000.0)
    hub.backend = backend
    node.features.add(hub)
    node.set_backend(backend)
    node.app_setups.append(lambda app, _node: WorkerApi(hub).add_routes(app))
    node.background.append(hub.maintain)
    return hub


def install_submitter(node: Node) -> None:
    """For commands that run beside `serve` on the same data directory (`verdict-node scan`): with
    ``workers.enabled`` and the serving node up, inference goes through its queue, so sweeps share the
    workers with the pict-rs endpoint. If the node is not running, the command keeps its own classifier."""
    settings = node.config.workers
    if not settings.enabled:
        return
    path = submit_token_path(node.config)
    if not path.exists():
        log.warning("workers.enabled, but %s does not exist yet (start `verdict-node serve` once); "
                    "classifying in this process", path)
        return
    token = path.read_text().strip()
    base = local_base_url(node.config)
    request = urllib.request.Request(f"{base}{API_PREFIX}/submit", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            info = json.loads(response.read())
        model = model_from_json(info.get("model"))
        geometry = Geometry.from_json(info.get("geometry"))
    except (OSError, ValueError, ProtocolError) as exc:
        log.warning("workers.enabled, but the serving node at %s does not answer (%s); classifying in this "
                    "process", base, exc)
        return
    local = node.backend
    if local is not None and not same_model(local.model, model):
        local = None
    node.set_backend(SubmitBackend(base, token, model, geometry, fallback=local, timeout_s=settings.job_ttl_s))
    log.info("inference goes through the serving node's worker queue at %s", base)
