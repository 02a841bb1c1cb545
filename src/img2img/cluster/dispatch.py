"""The server's runner on Ray (``img2img serve --ray``): the same queue, handed to Ray actors instead of the local
worker process.

The durable SQLite queue stays the source of truth: priorities, limits, cancellation and the event streams work
as with the local runner, through the same ``JobBook``. One thread per actor claims the next queued job under a
lease that names the actor, sends it with its pictures, and relays what the actor streams back (steps, previews,
then the outcome). When an actor or its node dies, Ray restarts the actor (elsewhere if need be) and the job is
leased again while it has attempts left; only the current lease can end a job, and outputs are named by their
content, so a retried job ends once, with one set of images. Models stay loaded in the actors between jobs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from img2img.cluster.connect import connected
from img2img.cluster.pool import Shape, plan, start
from img2img.cluster.workers import JobWorker
from img2img.jobs.book import Events, JobBook, Progress
from img2img.jobs.worker import engine_arguments

if TYPE_CHECKING:
    from types import ModuleType

    from img2img.jobs.blobs import BlobStore
    from img2img.jobs.store import Job, JobStore
    from img2img.server.settings import ServerSettings

log = logging.getLogger("img2img.server")
STOP_GRACE_S = 2.0  # on shutdown, how long running jobs may take to reach their next step before the actors go
RESTART_WAIT_S = 600.0  # how long a slot waits for Ray to bring its actor back before it gives up
MANY = 1 << 20  # no cap from the number of requests: the server's queue has no end


class RayRunner:
    """A runner (the face of ``img2img.jobs.runner.Runner``) whose workers are Ray actors, one job each at a time."""

    def __init__(self, settings: ServerSettings, store: JobStore, blobs: BlobStore, hub: Events) -> None:
        assert settings.ray is not None
        self.settings, self.store, self.blobs, self.hub = settings, store, blobs, hub
        self.book = JobBook(settings, store, blobs, hub)
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._running: dict[str, Any] = {}  # job id -> the actor running it
        self._threads: list[threading.Thread] = []
        self._main: threading.Thread | None = None
        self._actors: list[Any] = []
        self._ready = threading.Event()
        self._state = "starting"
        self.put_back: str | None = None  # a job that was running when the server stopped, queued again
        self.shape: Shape | None = None

    @property
    def state(self) -> str:
        """starting, idle, running or stopped (shown by /v1/health)."""
        with self._lock:
            busy = bool(self._running)
        return "running" if busy and self._state == "idle" else self._state

    def start(self) -> None:
        self._main = threading.Thread(target=self._life, name="img2img-ray", daemon=True)
        self._main.start()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def cancel_running(self, job_id: str) -> bool:
        with self._lock:
            actor = self._running.get(job_id)
        if actor is None:
            return False
        actor.cancel.remote(job_id)
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Put the running jobs back in the queue and let the actors go; returns within a few seconds."""
        self._stop.set()
        self.wake()
        if self._main is not None:
            self._main.join(timeout_s)

    # The runner's life: connect, start the actors, one slot thread each, then leave the cluster -------------

    def _life(self) -> None:
        assert self.settings.ray is not None
        try:
            with connected(self.settings.ray) as ray:
                self.shape = plan(ray, self.settings.device, self.settings.ray_workers, self.settings.cpus_per_worker,
                                  MANY)
                self._actors = start(ray, JobWorker, self.shape, (engine_arguments(self.settings), self.shape.cpus,
                                                                  self.settings.model),
                                     max_restarts=-1, max_task_retries=0, max_concurrency=2)
                log.info("jobs run on %s at %s", self.shape.describe(), self.settings.ray)
                self._state = "idle"
                for number, actor in enumerate(self._actors):
                    thread = threading.Thread(target=self._slot, args=(ray, actor), name=f"img2img-ray-{number}",
                                              daemon=True)
                    thread.start()
                    self._threads.append(thread)
                self._stop.wait()
                self._wind_down(ray)
        except Exception:  # the cluster could not be joined: the server answers, jobs wait in the queue
            log.exception("the Ray cluster at %s could not run jobs; they wait in the queue", self.settings.ray)
        self._state = "stopped"

    def _wind_down(self, ray: ModuleType) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):
                actor.stop.remote()
        deadline = time.monotonic() + STOP_GRACE_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for actor in self._actors:  # a job still loading its model has no step to stop at soon
            ray.kill(actor)
        for thread in self._threads:
            thread.join(5.0)

    # One slot: an actor and the jobs it runs, one after another ----------------------------------------------

    def _slot(self, ray: ModuleType, actor: Any) -> None:
        where = ray.get(actor.whereabouts.remote())
        while not self._stop.is_set():
            job = self.store.claim_next(f"Ray actor pid {where['pid']} on {where['node']}")
            if job is None:
                with self._wake:
                    self._wake.wait(1.0)
                continue
            with self._lock:
                self._running[job.id] = actor
            self.hub.publish_positions(self.store)
            try:
                died = self._run(ray, actor, job, where)
            except Exception as exc:  # a fault of ours: the job fails with a reason, the slot goes on
                log.exception("job %s failed on the Ray worker on %s", job.id, where["node"])
                self.book.conclude(job, ("failed", f"internal error ({type(exc).__name__}: {exc})"))
                died = False
            finally:
                with self._lock:
                    self._running.pop(job.id, None)
                self.hub.publish_positions(self.store)
            if died:
                back = self._back(ray, actor)
                if back is None:
                    if not self._stop.is_set():
                        log.error("a Ray worker did not come back in %.0f s; %d others run the jobs", RESTART_WAIT_S,
                                  len(self._actors) - 1)
                    return
                where = back

    def _run(self, ray: ModuleType, actor: Any, job: Job, where: dict[str, Any]) -> bool:
        """Run ``job`` on ``actor``; True when the actor died under it."""
        self.book.started(job)
        try:
            pictures = {name: self.blobs.read(name) for name in job.request.blob_names()}
        except (OSError, ValueError) as exc:  # the image store lost a picture (removed by hand): say which
            self.book.conclude(job, ("failed", f"a picture of this job is missing from the image store ({exc})"))
            return False
        progress, outcome = Progress(), None
        try:
            stream = actor.run.options(num_returns="streaming").remote(job.id, job.request, pictures,
                                                                     str(self.blobs.root))
            for reference in stream:
                message = ray.get(reference)
                if not self.book.report(job, message, progress):
                    outcome = message
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            if self._stop.is_set():  # killed on shutdown: back to the queue, no attempt used
                self.store.requeue(job.id, job.lease)
                self.put_back = job.id
            else:
                self.book.after_death(job, _reason(exc), f"the Ray worker on {where['node']}")
            return True
        if outcome is None:
            outcome = ("failed", "internal error (the Ray worker ended the job without an outcome)")
        self.book.conclude(job, outcome)
        if outcome[0] == "stopped":
            self.put_back = job.id
        return False

    def _back(self, ray: ModuleType, actor: Any) -> dict[str, Any] | None:
        """Wait for Ray to restart ``actor``; its new whereabouts, or None on shutdown or when it never comes."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                where: dict[str, Any] = ray.get(actor.whereabouts.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.GetTimeoutError):
                self._stop.wait(1.0)
                continue
            log.info("the Ray worker is back (pid %s on %s)", where["pid"], where["node"])
            return where
        return None


def _reason(exc: BaseException) -> str:
    """The first line of Ray's account of an actor's death."""
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return type(exc).__name__
