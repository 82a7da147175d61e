"""`Node`: everything one running instance holds, in one object — config, store, perceptual indexes,
policy, inference backend, keys, metrics — plus the hook points later features plug into.

Hook points (all plain attributes, set by a feature package's `install(node)` or by tests):
  - `node.lookup_peers`: `async (fingerprint, deadline) -> PeerAnswers`, verified peer verdicts for an image
    we cannot decide yet, and one line per peer that gave no usable answer (federation). `deadline` is
    `loop.time()`-based.
  - `node.bank_check`: a `node.hooks.BankCheck` (hash banks): known-bad hashes that block before inference
    and never become verdicts.
  - `node.on_own_verdict`: callbacks `(verdict, signed_document) -> None | Awaitable[None]`, called once
    per new own verdict (federation publishes them to the outbox).
  - `node.app_setups`: `(app: aiohttp.web.Application, node) -> None`, called by `server.build_app` to
    add routes (/actor, /inbox, ...).
  - `node.background`: `async (node) -> None` coroutines started with the node and cancelled at close
    (delivery loops, sweep daemons).
  - `node.features`: the objects feature packages add (``node.features.get(Federation)``), and
    `node.on_close`: coroutines run when the node closes, before the store does.
  - `node.attribution`: a `node.hooks.Attributor` (attribution): who uploaded an image and where it is used,
    None when no instance database or pict-rs API is configured.
  - `node.evidence`: the core's `node.evidence.EvidenceRecords` (not a hook: always there).
  - `node.on_peers_changed`: callbacks `(peers) -> None`, called by `reload_peers` once a new peers.yaml
    is in force (federation swaps who may read, the key pins and whom to follow).
  - `node.set_backend(backend)`: swap the inference backend (a remote worker pool instead of the local
    BatchingClassifier); anything with `model`, `async classify_frames(frames)` (raising QueueFull),
    `unavailable()` and `async close()` fits.
Node.open installs no feature: the composition roots do (node.serve for `serve`, a package's commands for its
commands), so the core never names a feature.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Protocol, Sequence, TypeVar

from node.config import ClassifierSection, ConfigError, NodeConfig, PeerEntry, is_model_none, load_peers
from node.datadir import open_identity
from node.peers_file import Signature, signature
from node.policy import policy_config_of
from node.index import HammingIndex
from node.metrics import Metrics
from node.evidence import EvidenceRecords
from node.hooks import Attributor, BankCheck, PeerLookup, VerdictCallback
from node.pipeline import Pipeline
from node.store import Store
from protocol.verdict import ModelInfo, Verdict
from scanners.batching import BatchingClassifier
from scanners.classifier import ModelUnavailable
from scanners.models import load_classifier

log = logging.getLogger("verdict_node")

AppSetup = Callable[[Any, "Node"], None]
BackgroundTask = Callable[["Node"], Awaitable[None]]
PeersChanged = Callable[[list[PeerEntry]], None]


FeatureT = TypeVar("FeatureT")
CloseHook = Callable[[], Awaitable[None]]


class Features:
    """What feature packages add to a node (the federation service, the worker hub), one object per type and
    looked up by that type, so the core never names a feature and callers get a typed answer:
    ``node.features.get(Federation)``."""

    def __init__(self) -> None:
        self._by_type: dict[type, object] = {}

    def add(self, feature: object) -> None:
        self._by_type[type(feature)] = feature

    def get(self, kind: type[FeatureT]) -> FeatureT | None:
        found = self._by_type.get(kind)
        return found if isinstance(found, kind) else None


class InferenceBackend(Protocol):
    """What the pipeline needs of a classifier: the local BatchingClassifier or a remote worker pool."""

    model: ModelInfo

    async def classify_frames(self, frames: Sequence[Any]) -> Any: ...  # -> Classification; raises QueueFull

    def unavailable(self) -> str | None: ...  # why it would refuse every image now (for /healthz), or None

    async def close(self) -> None: ...


def on_stop_signals(callback: Callable[[], Any]) -> None:
    """Call ``callback`` on SIGTERM and SIGINT, so `serve` and `scan` shut down cleanly (flushing writes,
    saving cursors) instead of dying mid-write. Silently skipped where the loop cannot take signals."""
    _on_signals((signal.SIGTERM, signal.SIGINT), callback)


def on_reload_signal(callback: Callable[[], Any]) -> None:
    """Call ``callback`` on SIGHUP (`kill -HUP`: read peers.yaml again), the daemon convention."""
    _on_signals((signal.SIGHUP,), callback)


def _on_signals(signums: Sequence[int], callback: Callable[[], Any]) -> None:
    loop = asyncio.get_running_loop()
    for signum in signums:
        try:
            loop.add_signal_handler(signum, callback)
        except (NotImplementedError, RuntimeError):
            pass


def load_backend(section: ClassifierSection) -> tuple[InferenceBackend | None, str | None]:
    """(backend, None) or (None, why there is none). A missing model is not fatal: the node still answers
    from known verdicts, and unknown images follow on_unavailable."""
    if is_model_none(section.model):
        return None, "classifier.model is none"
    try:
        classifier = load_classifier(section.model, device=section.device, batch_size=section.batch_size,
                                     cache_dir=section.cache_dir)
    except ModelUnavailable as e:
        return None, str(e)
    return BatchingClassifier(classifier, max_batch=section.batch_size, max_wait_ms=section.max_wait_ms,
                              max_queue=section.max_queue), None


class Node:
    def __init__(self, config: NodeConfig, store: Store, *, backend: InferenceBackend | None = None,
                 backend_problem: str | None = None, peers: Sequence[PeerEntry] = (),
                 ed25519_key: Any = None, rsa_key: Any = None) -> None:
        self.config = config
        self.store = store
        # The flush loop writes decision rows in the background; a synchronous flush on the event loop
        # (the Store's own safety valve) is only for a backlog far beyond one interval's worth.
        store.FLUSH_AT = 20_000
        self.peers = list(peers)
        self.peers_signature: Signature = signature(config.peers_path)
        self.ed25519_key = ed25519_key
        self.rsa_key = rsa_key
        self.metrics = Metrics()
        self.metrics.classifier_available.set_function(lambda: 0.0 if self.classifier_problem() else 1.0)
        self.phash_index = HammingIndex(64)
        self.pdq_index = HammingIndex(256)
        self.backend: InferenceBackend | None = None
        self.backend_problem: str | None = backend_problem
        self.executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="decode")
        # Hook points, see the module docstring.
        self.lookup_peers: PeerLookup | None = None
        self.bank_check: BankCheck | None = None
        self.attribution: Attributor | None = None
        self.evidence = EvidenceRecords(store, config.evidence.retain_days)
        self.on_own_verdict: list[VerdictCallback] = []
        self.app_setups: list[AppSetup] = []
        self.background: list[BackgroundTask] = []
        self.features = Features()
        self.on_close: list[CloseHook] = []
        self.on_peers_changed: list[PeersChanged] = []
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self.set_backend(backend, backend_problem)
        self._load_indexes()
        self.pipeline = Pipeline(self)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def open(cls, config: NodeConfig, *, load_model: bool = True) -> "Node":
        """Open the data directory: keys (created for a new data directory only, see node.datadir), database,
        peers, classifier. Features are installed by the caller (node.serve.open_serving_node)."""
        identity = open_identity(config)
        peers = load_peers(config.peers_path)
        backend, problem = load_backend(config.classifier) if load_model else (None, "classifier not loaded")
        if problem and load_model and is_model_none(config.classifier.model):
            log.info("no classifier: classifier.model is none, so this node classifies nothing itself; it answers "
                     "from verdicts (its own, its peers', lookups) and remote workers, and unknown images per "
                     "pictrs.on_unavailable: %s", config.pictrs.on_unavailable)
        elif problem and load_model:
            log.warning("no classifier: %s (node.yaml classifier.model is %r; until it loads, known images are "
                        "answered from stored verdicts and unknown ones per pictrs.on_unavailable: %s)",
                        problem.rstrip("."), config.classifier.model, config.pictrs.on_unavailable)
        node = cls(config, Store(config.database_path), backend=backend, backend_problem=problem, peers=peers,
                   ed25519_key=identity.ed25519, rsa_key=identity.rsa)
        return node

    def _load_indexes(self) -> None:
        self._synced_rowid = self.store.max_verdict_rowid()
        self._synced_retractions_at = time.time()
        self._synced_retractions: set[int] = set()
        phash_refs, phashes, pdq_refs, pdqs = [], [], [], []
        for rowid, phash, pdq in self.store.active_perceptual():
            if phash:
                phash_refs.append(rowid)
                phashes.append(phash)
            if pdq:
                pdq_refs.append(rowid)
                pdqs.append(pdq)
        if phashes:
            self.phash_index.add_many(phash_refs, phashes)
        if pdqs:
            self.pdq_index.add_many(pdq_refs, pdqs)
        self._update_index_gauges()

    def sync_with_store(self, overlap: float = 5.0) -> int:
        """Learn verdict changes made by other processes (a CLI retraction, a sweep's new verdicts): index new
        rows, drop retracted ones, and invalidate memoised decisions. Returns how many entries changed.
        Re-adding or re-removing is harmless, so the retraction window overlaps the previous one."""
        changed = 0
        for rowid, phash, pdq, retracted in self.store.verdicts_after(self._synced_rowid):
            self._synced_rowid = max(self._synced_rowid, rowid)
            if retracted:
                continue
            if phash:
                self.phash_index.add(rowid, phash)
            if pdq:
                self.pdq_index.add(rowid, pdq)
            changed += 1
        now = time.time()
        retracted = set(self.store.retracted_since(self._synced_retractions_at - overlap))
        for rowid in retracted:
            removed_phash = self.phash_index.remove(rowid)
            removed_pdq = self.pdq_index.remove(rowid)
            # A verdict in no index (no perceptual hash) still ends the decisions memoised from it; the
            # previous window's rows are not news again.
            changed += int(removed_phash or removed_pdq or rowid not in self._synced_retractions)
        self._synced_retractions = retracted
        self._synced_retractions_at = now
        if changed:
            self.store.generation += 1
            self._update_index_gauges()
        return changed

    def _update_index_gauges(self) -> None:
        self.metrics.index_size.labels("phash64").set(len(self.phash_index))
        self.metrics.index_size.labels("pdq256").set(len(self.pdq_index))

    # -- state changes used by the pipeline and features -----------------------------------------

    @property
    def actor_id(self) -> str:
        return self.config.actor_id

    @property
    def ed25519_key_id(self) -> str:
        return f"{self.actor_id}#ed25519-key"

    @property
    def rsa_key_id(self) -> str:
        return f"{self.actor_id}#main-key"

    @property
    def model(self) -> ModelInfo | None:
        return self.backend.model if self.backend is not None else None

    def set_backend(self, backend: InferenceBackend | None, problem: str | None = None) -> None:
        """Use another inference backend (or none); the policy learns its model as a known model."""
        self.backend = backend
        self.backend_problem = None if backend is not None else (problem or self.backend_problem or "no classifier")
        self.policy = policy_config_of(self.config, self.peers, own_model=self.model,
                                       own_models=self.store.own_models())

    def reload_peers(self) -> bool:
        """Read peers.yaml again and put it in force at once: the policy (whose verdicts count, how far),
        then every ``on_peers_changed`` callback, all between two requests (nothing here awaits). A file
        that does not parse is refused with its one line, and the peers in force stay. True when reloaded."""
        path = self.config.peers_path
        seen = signature(path)
        try:
            peers = load_peers(path)
        except ConfigError as exc:
            self.peers_signature = seen  # not tried again until it changes
            log.error("peers.yaml not reloaded, the %d peer(s) in force stay: %s", len(self.peers), exc)
            return False
        self.peers, self.peers_signature = peers, seen
        self.policy = policy_config_of(self.config, self.peers, own_model=self.model,
                                       own_models=self.store.own_models())
        for callback in list(self.on_peers_changed):
            try:
                callback(peers)
            except Exception:  # noqa: BLE001 - one feature's failure must not undo the others' swap
                log.exception("applying the new peers.yaml failed in %r", callback)
        log.info("peers.yaml reloaded: %d peer(s): %s", len(peers),
                 ", ".join(f"{p.actor} ({p.trust})" for p in peers) or "none")
        return True

    def add_verdict(self, verdict: Verdict, document: dict | None, *, own: bool,
                    origin: str | None = None) -> tuple[int, bool]:
        """Store a verdict and index its perceptual hashes (idempotent). ``origin``: how it reached us
        (node.store.VERDICT_ORIGINS). Returns (rowid, inserted_now)."""
        rowid, inserted = self.store.insert_verdict(verdict, document, own=own, origin=origin)
        if inserted and rowid == self._synced_rowid + 1:
            self._synced_rowid = rowid  # nothing from another process in between: no need to read it back
        if inserted:
            fp = verdict.fingerprint
            if fp.phash64:
                self.phash_index.add(rowid, fp.phash64)
            if fp.pdq256:
                self.pdq_index.add(rowid, fp.pdq256)
            self._update_index_gauges()
        return rowid, inserted

    def retract_verdict(self, verdict_id: str, reason: str) -> bool:
        """Retract a stored verdict and drop it from the indexes, so it stops counting at once."""
        rowid = self.store.retract_verdict(verdict_id, reason)
        if rowid is None:
            return False
        self.phash_index.remove(rowid)
        self.pdq_index.remove(rowid)
        self._update_index_gauges()
        return True

    async def emit_own_verdict(self, verdict: Verdict, document: dict) -> None:
        """Run the on_own_verdict callbacks; one failing callback never loses the verdict or the answer."""
        for callback in list(self.on_own_verdict):
            try:
                result = callback(verdict, document)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 - a publishing bug must not fail an upload
                log.exception("on_own_verdict callback %r failed for %s", callback, verdict.id)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start background work: periodic flush of decision rows and the features' tasks."""
        if self._started:
            return
        self._started = True
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="flush-decisions"))
        for task in self.background:
            self._tasks.append(asyncio.create_task(task(self), name=getattr(task, "__name__", "background")))

    async def _flush_loop(self, interval: float = 0.5) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                self.sync_with_store()
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("reading verdict changes from the database failed")
            if self.store.pending_decisions:
                try:
                    await loop.run_in_executor(self.executor, self.store.flush)
                except Exception:  # noqa: BLE001 - keep the rows queued and retry next time
                    log.exception("writing decision rows failed; will retry")

    async def close(self) -> None:
        """Stop background tasks, let running inference end, write every pending row, close the db."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        await self.pipeline.drain()
        for hook in self.on_close:
            try:
                await hook()
            except Exception:  # noqa: BLE001 - one feature's failure must not keep the store open
                log.exception("closing %r failed", hook)
        if self.backend is not None:
            await self.backend.close()
        self.executor.shutdown(wait=True)
        self.store.close()
        self._started = False

    def classifier_problem(self) -> str | None:
        """Why no image can be classified now, or None. A backend can be installed and still classify
        nothing (workers only, none connected)."""
        return self.backend.unavailable() if self.backend is not None else self.backend_problem

    def health(self) -> dict[str, Any]:
        model = self.model
        problem = self.classifier_problem()
        return {
            "ok": True,
            "actor": self.actor_id,
            "classifier": {
                "available": problem is None,
                "model": {"name": model.name, "version": model.version, "rules": model.rules} if model else None,
                "problem": problem,
            },
            "counts": {**self.store.counts(), "phash_index": len(self.phash_index), "pdq_index": len(self.pdq_index)},
        }
