"""The in-process runner: one worker thread per server that takes jobs from the store and runs them on one engine.

Models stay loaded between jobs (the engine's cache). A job is cancelled between two denoising steps by raising
from the progress callback; on shutdown the running job goes back to the queue without using up an attempt. The
store does not know the runner: a runner spread over many machines would claim jobs from the same store.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from typing import Any

from img2img.errors import Img2ImgError
from img2img.server.blobs import BlobStore
from img2img.server.events import EventHub
from img2img.server.settings import ServerSettings
from img2img.server.store import Job, JobStore

log = logging.getLogger("img2img.server")
PROGRESS_WRITE_S = 0.25  # at most this often a running job's progress is written to the database


class _Cancelled(Exception):
    pass


class _Stopping(Exception):
    pass


class Runner:
    def __init__(self, settings: ServerSettings, store: JobStore, blobs: BlobStore, hub: EventHub) -> None:
        self.settings, self.store, self.blobs, self.hub = settings, store, blobs, hub
        self._wake, self._stop = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self._cancel: set[str] = set()
        self._current: str | None = None
        self._engine: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="img2img-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        """A job was queued: look at the queue now instead of at the next poll."""
        self._wake.set()

    def cancel_running(self, job_id: str) -> bool:
        """Ask the running job ``job_id`` to stop at its next step; False when it is not the one running."""
        with self._lock:
            if self._current != job_id:
                return False
            self._cancel.add(job_id)
            return True

    @property
    def engine(self) -> Any:
        """The engine, made on first use (request threads check sizes with it while the worker runs jobs)."""
        with self._lock:
            if self._engine is None:
                from img2img.api import Engine

                s = self.settings
                self._engine = Engine(device=s.device, backend=s.backend, quantize=s.quantize,
                                      max_images=s.max_images_per_job, max_source_pixels=s.max_pixels,
                                      max_memory=s.max_memory)
            return self._engine

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            with self._lock:
                self._current = job.id
            self.hub.publish_positions(self.store)
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._current = None
                    self._cancel.discard(job.id)
                self.hub.publish_positions(self.store)

    def _run(self, job: Job) -> None:
        self.hub.publish(job.id, "started", attempt=job.attempts)
        try:
            outputs, notes = self._generate(job)
        except _Cancelled:
            self.store.finish(job.id, "cancelled", error="cancelled while running")
            self.hub.publish(job.id, "cancelled")
        except _Stopping:
            self.store.requeue(job.id)
        except Img2ImgError as exc:
            self.store.finish(job.id, "failed", error=str(exc))
            self.hub.publish(job.id, "failed", error=str(exc))
        except Exception as exc:  # a fault of ours: keep serving, fail the job with a reason, log the traceback
            log.exception("job %s failed", job.id)
            message = f"internal error ({type(exc).__name__}: {exc})"
            self.store.finish(job.id, "failed", error=message)
            self.hub.publish(job.id, "failed", error=message)
        else:
            self.store.finish(job.id, "done", outputs=outputs, notes=notes)
            self.hub.publish(job.id, "done", outputs=[output["image"] for output in outputs])

    def _generate(self, job: Job) -> tuple[list[dict[str, Any]], list[str]]:
        from img2img.engine.request import GenerationRequest
        from img2img.imageio.metadata import Metadata, save_options

        fields = dict(job.request)
        source, style = fields.pop("source"), fields.pop("style_image", None)
        size = fields.pop("size", None)
        fields["model"] = fields.get("model") or self.settings.model
        request = GenerationRequest(source=self.blobs.path(source), size=tuple(size) if size else None,
                                    style_image=self.blobs.path(style) if style else None, **fields)
        engine = self.engine
        diffusion = not engine.is_builtin(request.model)
        state = {"step": 0, "total": 0, "written": 0.0}

        def on_progress(index: int, done: int, total: int) -> None:
            if job.id in self._cancel:
                raise _Cancelled
            if self._stop.is_set():
                raise _Stopping
            state["step"], state["total"] = index * total + done, total * request.num_images
            now = time.monotonic()
            if now - state["written"] >= PROGRESS_WRITE_S or done == total:
                self.store.progress(job.id, state["step"], state["total"])
                state["written"] = now
            if not diffusion:
                self.hub.publish(job.id, "step", step=state["step"], total=state["total"])

        def on_preview(_index: int, image: Any) -> None:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=70)
            preview = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            self.hub.publish(job.id, "step", step=state["step"], total=state["total"], preview=preview)

        result = engine.generate(request, on_progress=on_progress, on_preview=on_preview)
        outputs = []
        for image, record in zip(result.images, result.records, strict=True):
            buffer = io.BytesIO()
            image.save(buffer, **save_options("png", Metadata(record.to_parameters_text(), record.to_json()), 0))
            outputs.append({"image": self.blobs.put(buffer.getvalue(), ".png"), "seed": record.seed,
                            "width": image.width, "height": image.height,
                            "parameters": record.to_parameters_text()})
        return outputs, list(result.notes)
