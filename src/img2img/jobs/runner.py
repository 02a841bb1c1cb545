"""The runner: a thread of the server that takes jobs from the store and hands them to the worker process.

The worker (``worker.py``) keeps the models loaded between jobs and reports steps and previews, which the runner
writes to the store and publishes as events. A job is cancelled between two denoising steps. When the worker
dies (killed, out of memory) the runner starts a new one and the job is retried while it has attempts left
(``max_attempts``), else it fails with the reason. On shutdown the running job goes back to the queue without
using up an attempt. The store does not know the runner: a runner spread over many machines would claim jobs
from the same store.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from img2img.jobs import worker
from img2img.jobs.blobs import BlobStore
from img2img.jobs.book import Events, JobBook, Progress
from img2img.jobs.store import Job, JobStore

if TYPE_CHECKING:
    from img2img.server.settings import ServerSettings

log = logging.getLogger("img2img.server")
WORKER_START_S = 300.0  # a worker that has not said ready by then is replaced
STOP_GRACE_S = 2.0  # on shutdown, how long the running job may take to reach its next step before the worker is killed
POLL_S = 0.1
MAX_BACKOFF_S = 30.0


class WorkerDied(Exception):
    """The worker process ended without an answer; the message says how (its exit status or signal)."""


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection  # jobs down, reports up
    control: Connection  # cancel and stop, read by a thread of the worker while a job runs

    def tell(self, *message: Any) -> None:
        with contextlib.suppress(OSError, ValueError):  # a worker that just died: its outcome says so
            self.control.send(message)

    def reason(self) -> str:
        self.process.join(1.0)
        code = self.process.exitcode
        if code is None:
            return "it stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory, or killed by hand)" if -code == signal.SIGKILL else ""
            return f"it was killed by {name}{hint}"
        return f"it exited with status {code}"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()
        self.control.close()


class Runner:
    def __init__(self, settings: ServerSettings, store: JobStore, blobs: BlobStore, hub: Events) -> None:
        self.settings, self.store, self.blobs, self.hub = settings, store, blobs, hub
        self.book = JobBook(settings, store, blobs, hub)
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._wake, self._stop = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self._current: str | None = None
        self._worker: _Worker | None = None
        self._thread: threading.Thread | None = None
        self.state = "starting"  # starting, idle, running, restarting, stopped: shown by /v1/health
        self.put_back: str | None = None  # the job that was running when the server stopped, queued again

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="img2img-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Put the running job back in the queue and end the worker; returns within a few seconds."""
        self._stop.set()
        with self._lock:
            if self._worker is not None:
                self._worker.tell("stop")
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        """A job was queued: look at the queue now instead of at the next poll."""
        self._wake.set()

    def cancel_running(self, job_id: str) -> bool:
        """Ask the running job ``job_id`` to stop at its next step; False when it is not the one running."""
        with self._lock:
            if self._current != job_id or self._worker is None:
                return False
            self._worker.tell("cancel", job_id)
            return True

    # The loop ---------------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self._worker is not None and not self._worker.process.is_alive():  # died while idle
                log.error("the worker process ended while idle (%s); a new one starts", self._worker.reason())
                self._worker.kill()
                self._worker = None
            if self._worker is None:
                try:
                    self._worker = self._start_worker()
                    failures = 0
                except WorkerDied as exc:
                    if self._stop.is_set():
                        break
                    failures += 1
                    delay = min(MAX_BACKOFF_S, 2.0**failures)
                    log.error("the worker process could not start: %s; trying again in %.0f s", exc, delay)
                    self.state = "restarting"
                    self._stop.wait(delay)
                    continue
            self.state = "idle"
            job = self.store.claim_next(f"local worker {self._worker.process.pid}")
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            with self._lock:
                self._current = job.id
            self.state = "running"
            self.hub.publish_positions(self.store)
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._current = None
                self.hub.publish_positions(self.store)
        self._close_worker()
        self.state = "stopped"

    def _start_worker(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        control_reader, control_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=worker.main, name="img2img-worker",
                                        args=(theirs, control_reader, self.settings))
        process.start()
        theirs.close()
        control_reader.close()
        started = _Worker(process, ours, control_writer)
        deadline = time.monotonic() + WORKER_START_S
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                if ours.poll(POLL_S):
                    if ours.recv() == ("ready",):
                        log.info("worker process %d ready", process.pid)
                        return started
                    break
            except (EOFError, OSError):
                break
            if not process.is_alive():
                break
        reason = started.reason() if not process.is_alive() else "it did not say ready"
        started.kill()
        raise WorkerDied(reason)

    def _close_worker(self) -> None:
        if self._worker is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._worker.conn.send(("quit",))
        self._worker.process.join(STOP_GRACE_S)
        self._worker.kill()
        self._worker = None

    # One job ----------------------------------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        assert self._worker is not None
        self.book.started(job)
        try:
            self._worker.conn.send(("run", job.id, job.request))
            outcome = self._outcome(job)
        except (WorkerDied, OSError) as exc:
            reason = str(exc) if isinstance(exc, WorkerDied) else self._worker.reason()
            self._worker.kill()
            self._worker = None
            self.book.after_death(job, reason)
            return
        self.book.conclude(job, outcome)
        if outcome[0] == "stopped":
            self.put_back = job.id

    def _outcome(self, job: Job) -> tuple[Any, ...]:
        """Relay the worker's reports until it gives the job's outcome."""
        assert self._worker is not None
        conn, process = self._worker.conn, self._worker.process
        progress = Progress()
        stop_deadline: float | None = None
        while True:
            if conn.poll(POLL_S):
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    raise WorkerDied(self._worker.reason()) from None
                if not self.book.report(job, message, progress):
                    return message  # type: ignore[no-any-return]
            elif not process.is_alive():
                raise WorkerDied(self._worker.reason())
            if self._stop.is_set():
                stop_deadline = stop_deadline or time.monotonic() + STOP_GRACE_S
                if time.monotonic() > stop_deadline:  # loading or converting: no step to stop at soon
                    self._worker.kill()
                    self._worker = None
                    return ("stopped",)
