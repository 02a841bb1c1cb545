"""Job events for server-sent events: the runner thread publishes, each open stream has its own asyncio queue.

Events are dicts with an ``event`` name (queued, position, started, step, done, failed, cancelled) and data. The
hub also remembers each running job's latest preview, for ``/sdapi/v1/progress``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from img2img.jobs.store import JobStore

FINAL_EVENTS = ("done", "failed", "cancelled")
STREAM_QUEUE = 256  # events a slow reader may fall behind by; older step events are dropped first


class EventHub:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._streams: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._waiters: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}  # told only how the job ended
        self._positions: dict[str, int] = {}
        self._previews: dict[str, str] = {}

    def subscribe(self, job_id: str, outcome_only: bool = False) -> asyncio.Queue[dict[str, Any]]:
        """A queue of the job's events; with ``outcome_only``, only the last one (done, failed or cancelled)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(STREAM_QUEUE)
        with self._lock:
            (self._waiters if outcome_only else self._streams).setdefault(job_id, set()).add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            for table in (self._streams, self._waiters):
                queues = table.get(job_id, set())
                queues.discard(queue)
                if not queues:
                    table.pop(job_id, None)
            if job_id not in self._streams:
                self._positions.pop(job_id, None)

    def publish(self, job_id: str, event: str, **data: Any) -> None:
        """Send an event to the job's streams; safe to call from any thread."""
        if event == "step" and "preview" in data:
            with self._lock:
                self._previews[job_id] = data["preview"]
        final = event in FINAL_EVENTS
        if final:
            with self._lock:
                self._previews.pop(job_id, None)
        with self._lock:
            if job_id not in self._streams and not (final and job_id in self._waiters):
                return
        self.loop.call_soon_threadsafe(self._deliver, job_id, {"event": event, "job": job_id, **data})

    @staticmethod
    async def next_event(queue: asyncio.Queue[dict[str, Any]], stopping: asyncio.Event, timeout_s: float
                         ) -> dict[str, Any] | None:
        """The stream's next event; None after ``timeout_s`` or as soon as ``stopping`` is set."""
        getter, stopper = asyncio.ensure_future(queue.get()), asyncio.ensure_future(stopping.wait())
        done, pending = await asyncio.wait({getter, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return getter.result() if getter in done else None

    def preview(self, job_id: str) -> str | None:
        with self._lock:
            return self._previews.get(job_id)

    def publish_positions(self, store: JobStore) -> None:
        """Tell every watched queued job its place in the queue, when it changed."""
        with self._lock:
            watched = set(self._streams)
        if not watched:
            return
        for place, job_id in enumerate(store.queued_ids(), start=1):
            if job_id in watched and self._positions.get(job_id) != place:
                self._positions[job_id] = place
                self.publish(job_id, "position", position=place)

    def _deliver(self, job_id: str, event: dict[str, Any]) -> None:
        waiting = self._waiters.get(job_id, set()) if event["event"] in FINAL_EVENTS else set()
        for queue in [*self._streams.get(job_id, ()), *waiting]:
            if queue.full():
                _drop_oldest_step(queue)
            if not queue.full():
                queue.put_nowait(event)


def _drop_oldest_step(queue: asyncio.Queue[dict[str, Any]]) -> None:
    """Make room by dropping the oldest event if it is a step (progress can be skipped, outcomes cannot)."""
    kept = [queue.get_nowait() for _ in range(queue.qsize())]
    dropped = next((i for i, item in enumerate(kept) if item["event"] == "step"), None)
    for i, item in enumerate(kept):
        if i != dropped:
            queue.put_nowait(item)
