"""Every process the bench starts, so that none outlives it.

Ten nodes that load torch are a few GB of memory; one left behind by a Ctrl-C keeps its ports and its
memory until someone finds it. So each child runs in its own process group (a Ctrl-C at the terminal
reaches the bench alone, which then stops the children in order, instead of racing them), and the bench
stops them all on every way out: the ``finally`` of the run, ``atexit``, SIGINT and SIGTERM.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
from types import FrameType

_GRACE_SECONDS = 15.0  # a node flushes its decision rows and closes its database on SIGTERM


class Children:
    """The bench's child processes: registered when started, stopped together."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.RLock()  # re-entered when a signal arrives while the main thread holds it
        self.started_pids: list[int] = []  # every pid ever registered, for the test's no-leftovers check

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        with self._lock:
            self._procs.append(proc)
            self.started_pids.append(proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = _GRACE_SECONDS) -> int:
        """SIGTERM to the child's process group, SIGKILL after ``grace`` seconds; its exit code."""
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def stop_all(self, grace: float = _GRACE_SECONDS) -> None:
        """Stop every child still registered: all get SIGTERM at once, then each is waited for."""
        with self._lock:
            procs, self._procs = list(self._procs), []
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass


CHILDREN = Children()
_installed = False


def install_handlers() -> None:
    """Stop the children at interpreter exit and on SIGINT / SIGTERM (then exit as that signal would).
    Only from the main thread, where Python runs signal handlers; installed once."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    atexit.register(CHILDREN.stop_all)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        CHILDREN.stop_all(grace=5.0)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
