"""A job that no executor can run ends, with one line saying why, instead of waiting forever.

On a ``spark://`` master the executors live on the workers. When the last
worker dies (its JVM killed, the machine gone), its executors die with it,
and Spark's scheduler waits for new ones: with ``scripts/cluster.sh``'s
supervisor the worker comes back within seconds, the master gives the
application a new executor and Spark reruns the lost tasks. When nothing
comes back, Spark would wait forever and the night would hang.

:class:`ExecutorWatchdog` (a daemon thread per SparkContext, started by
:func:`recsys_spark.session.build_spark` for ``spark://`` masters) asks the
driver every few seconds how many executors the application has and whether a
job is running. A job that has had no executor for
``spark.lost_executors_timeout_s`` seconds is cancelled, with the reason, and
:func:`recsys_spark.cli.job_main` turns the job's resulting error into
:class:`ExecutorsLostError` carrying that reason: the stage's recorded reason
(``status.json``) and the job's last stderr line are one line naming the cause
and what to check. The pipeline stops the night there (every later stage
needs executors too); a rerun of the date resumes where it stopped.

On ``local[N]`` the executor is the driver itself: nothing to watch.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any

_lock = threading.Lock()
_given_up: list[str] = []        # every give-up's message, in order (see mark / given_up_since)
_current: ExecutorWatchdog | None = None


class ExecutorsLostError(RuntimeError):
    """A job was cancelled because the application had no executor for too long (the message says what to check)."""


def check(waiting_since: float | None, *, now: float, executors: int, jobs_running: bool,
          timeout_s: float) -> tuple[float | None, bool]:
    """One look at the application: ``(waiting_since, give_up)``.

    ``waiting_since`` is when the application was first seen with a job running
    and no executor (None: not in that state). It is reset as soon as an
    executor is there or no job runs; giving up resets it too, so a later job
    gets its own ``timeout_s``.
    """
    if executors > 0 or not jobs_running:
        return None, False
    since = now if waiting_since is None else waiting_since
    if now - since >= timeout_s:
        return None, True
    return since, False


def poll_interval(timeout_s: float) -> float:
    """How often to look: a tenth of the timeout, between 0.5 and 5 s."""
    return min(5.0, max(0.5, timeout_s / 10))


def message(timeout_s: float, hint: str) -> str:
    return (f"no executor for {timeout_s:g} s while a Spark job waited: the cluster lost its workers "
            f"and none came back (spark.lost_executors_timeout_s); {hint}")


def mark() -> int:
    """A point in time for :func:`given_up_since` (how many times a watchdog has given up so far)."""
    with _lock:
        return len(_given_up)


def given_up_since(mark_: int) -> str | None:
    """The last give-up's message after ``mark_`` (None: no job was cancelled for lost executors since)."""
    with _lock:
        return _given_up[-1] if len(_given_up) > mark_ else None


def _record(text: str) -> None:
    with _lock:
        _given_up.append(text)


class ExecutorWatchdog(threading.Thread):
    """Watches one SparkContext until it stops (see the module's doc)."""

    def __init__(self, sc: Any, timeout_s: float, hint: str):
        super().__init__(daemon=True, name="recsys-executor-watchdog")
        self.sc, self.timeout_s, self.hint = sc, float(timeout_s), hint
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def _look(self) -> tuple[int, bool]:
        jsc = self.sc._jsc
        # getExecutorIds: the executors registered with the scheduler, alive (never the driver).
        return jsc.sc().getExecutorIds().size(), bool(self.sc.statusTracker().getActiveJobsIds())

    def run(self) -> None:
        waiting_since = None
        while not self._stop_event.wait(poll_interval(self.timeout_s)):
            if self.sc._jsc is None:  # the context was stopped
                return
            try:
                executors, running = self._look()
            except Exception:  # noqa: BLE001 - the context stopping under us; a transient py4j error
                if self.sc._jsc is None:
                    return
                continue
            waiting_since, give_up = check(waiting_since, now=time.monotonic(), executors=executors,
                                           jobs_running=running, timeout_s=self.timeout_s)
            if give_up:
                self._give_up()

    def _give_up(self) -> None:
        text = message(self.timeout_s, self.hint)
        _record(text)  # before cancelling: the job's error must find it
        print(f"recsys_spark.watchdog: {text}; cancelling the running Spark jobs", file=sys.stderr, flush=True)
        try:
            jsc = self.sc._jsc.sc()
            for job_id in self.sc.statusTracker().getActiveJobsIds():
                jsc.cancelJob(int(job_id), text)  # the job's SparkException carries the reason
            self.sc.cancelAllJobs()
        except Exception as exc:  # noqa: BLE001 - a context stopping meanwhile has no job left to cancel
            print(f"recsys_spark.watchdog: cancelling failed: {exc!r}", file=sys.stderr, flush=True)


def watch(sc: Any, timeout_s: float, hint: str) -> ExecutorWatchdog | None:
    """Start (or update) the watchdog of ``sc``; one per SparkContext. ``timeout_s`` 0: none (and stop any)."""
    global _current
    with _lock:
        current = _current
        if current is not None and (current.sc is not sc or not timeout_s):
            current.stop()
            current = None
        if not timeout_s:
            _current = None
            return None
        if current is not None and current.is_alive():
            current.timeout_s, current.hint = float(timeout_s), hint
            return current
        _current = ExecutorWatchdog(sc, timeout_s, hint)
        _current.start()
        return _current
