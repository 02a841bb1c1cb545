"""What a runner does with a running job's reports and its outcome, the same whoever ran it (the local worker
process, or a Ray actor on another machine): steps to the store and the event streams, images to the image store,
the end recorded under the job's lease, and a retry when the worker died."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from img2img.jobs.blobs import BlobStore
from img2img.jobs.store import Job, JobStore

if TYPE_CHECKING:
    from img2img.server.settings import ServerSettings

log = logging.getLogger("img2img.server")
PROGRESS_WRITE_S = 0.25  # at most this often a running job's progress is written to the database


class Events(Protocol):
    """Where the runner tells what happens to jobs (the server's event hub, for its streams)."""

    def publish(self, job_id: str, event: str, **data: Any) -> None: ...

    def publish_positions(self, store: JobStore) -> None: ...


class JobRunner(Protocol):
    """What the server asks of a runner: the local one (``jobs.runner``) or Ray's (``cluster.dispatch``)."""

    put_back: str | None  # the job that was running when the server stopped, queued again

    @property
    def state(self) -> str: ...

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 10.0) -> None: ...

    def wake(self) -> None: ...

    def cancel_running(self, job_id: str) -> bool: ...


@dataclass
class Progress:
    """A running job's last reported step, and when it was last written to the store."""

    step: int = 0
    total: int = 0
    written: float = field(default=0.0)


class JobBook:
    def __init__(self, settings: ServerSettings, store: JobStore, blobs: BlobStore, hub: Events) -> None:
        self.settings, self.store, self.blobs, self.hub = settings, store, blobs, hub

    def started(self, job: Job) -> None:
        self.hub.publish(job.id, "started", attempt=job.attempts)

    def report(self, job: Job, message: tuple[Any, ...], progress: Progress) -> bool:
        """Relay a step or a preview (True), or say that ``message`` is the job's outcome (False)."""
        if message[0] == "progress":
            _, step, total, diffusion = message
            progress.step, progress.total = step, total
            now = time.monotonic()
            if now - progress.written >= PROGRESS_WRITE_S or step == total:
                self.store.progress(job.id, step, total)
                progress.written = now
            if not diffusion:  # diffusion steps are published with their previews
                self.hub.publish(job.id, "step", step=step, total=total)
            return True
        if message[0] == "preview":
            self.hub.publish(job.id, "step", step=progress.step, total=progress.total, preview=message[1])
            return True
        return False

    def conclude(self, job: Job, outcome: tuple[Any, ...]) -> None:
        """Record the worker's outcome for ``job`` (only while its lease holds); "stopped" puts it back in the
        queue without using up an attempt."""
        kind = outcome[0]
        if kind == "done":
            outputs = [self._stored(output) for output in outcome[1]]
            if self.store.finish(job.id, "done", outputs=outputs, notes=outcome[2], lease=job.lease):
                self.hub.publish(job.id, "done", outputs=[output["image"] for output in outputs])
        elif kind == "cancelled":
            if self.store.finish(job.id, "cancelled", error="cancelled while running", lease=job.lease):
                self.hub.publish(job.id, "cancelled")
        elif kind == "stopped":
            self.store.requeue(job.id, job.lease)
        elif self.store.finish(job.id, "failed", error=outcome[1], lease=job.lease):
            self.hub.publish(job.id, "failed", error=outcome[1])

    def after_death(self, job: Job, reason: str, worker: str = "the worker process") -> None:
        """Retry the job on a new worker while it has attempts left; else fail it, saying why."""
        if job.attempts >= self.settings.max_attempts:
            error = (f"{worker} died while running this job, {job.attempts} times (last: {reason}); "
                     "not retried again")
            if self.store.finish(job.id, "failed", error=error, lease=job.lease):
                self.hub.publish(job.id, "failed", error=error)
            log.error("job %s failed: %s", job.id, error)
            return
        self.store.retry(job.id, job.lease)
        self.hub.publish(job.id, "queued", reason=f"{worker} died ({reason}); retrying")
        log.error("%s died while running job %s (%s); the job runs again (attempt %d of %d)", worker, job.id,
                  reason, job.attempts + 1, self.settings.max_attempts)

    def _stored(self, output: dict[str, Any]) -> dict[str, Any]:
        """An output as the store keeps it: the PNG written to the image store, its name in place of the bytes."""
        kept = {key: value for key, value in output.items() if key != "png"}
        return {"image": self.blobs.put(output["png"], ".png"), **kept}
