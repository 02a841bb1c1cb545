"""The worker process: it holds the engine and its loaded models and runs one job at a time for the runner.

Generation, model loading and conversion run here, in a process of their own, so they never hold the server's
interpreter: the API answers at once while a model loads or converts. The worker writes nothing that lasts; the
runner owns the job store and the image files, so killing the worker at any moment loses no state.

It talks to the runner over two pipes. On the first, from the runner: ``("run", job_id, JobRequest)`` and
``("quit",)``;
to the runner: ``("ready",)`` once the engine exists, then for each job any number of ``("progress", step, total,
diffusion)`` and ``("preview", data_url)``, and one outcome: ``("done", outputs, notes)``, ``("failed", message)``,
``("cancelled",)`` or ``("stopped",)``. The second carries ``("cancel", job_id)`` and ``("stop",)`` to a thread
of the worker that the running job asks between two steps; when the runner's end of it closes (the server ended,
even by SIGKILL) the worker ends too.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from img2img.errors import Img2ImgError, ModelError
from img2img.jobs.blobs import BlobStore

if TYPE_CHECKING:
    from img2img.api import Engine
    from img2img.jobs.request import JobRequest
    from img2img.server.settings import ServerSettings

log = logging.getLogger("img2img.worker")
Send = Callable[[tuple[Any, ...]], None]  # how a running job reports: the pipe to the runner, or a Ray stream


class _Cancelled(Exception):
    pass


class _Stopping(Exception):
    pass


def make_engine(settings: ServerSettings) -> Engine:
    """The engine both processes use: the server's to check requests, the worker's to run them."""
    from img2img.api import Engine

    return Engine(**engine_arguments(settings))


def engine_arguments(settings: ServerSettings) -> dict[str, Any]:
    """The server's engine as keyword arguments of ``Engine`` (a Ray worker makes its own from them)."""
    return {"device": settings.device, "backend": settings.backend, "quantize": settings.quantize,
            "max_images": settings.max_images_per_job, "max_source_pixels": settings.max_pixels,
            "max_memory": settings.max_memory, "control_paths": False}


@dataclass
class Controls:
    """What the runner asked of the running job, set by the control thread."""

    cancelled: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)


def main(conn: Connection, control: Connection, settings: ServerSettings) -> None:
    """The worker's life: make the engine, say ready, run jobs until told to quit or the server is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the server decides
    os.nice(settings.worker_niceness)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    controls = Controls()
    threading.Thread(target=_listen, args=(control, controls), name="control", daemon=True).start()
    engine = make_engine(settings)
    blobs = BlobStore(settings.data_dir / "images")
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "run":
            return
        _, job_id, job = message
        conn.send(outcome(engine, settings.model, blobs, conn.send, job_id, job, controls))
        controls.cancelled.discard(job_id)  # a cancel that came after the job ended has nothing left to stop


def _listen(control: Connection, controls: Controls) -> None:
    while True:
        try:
            message = control.recv()
        except (EOFError, OSError):
            os._exit(0)  # the server is gone (a SIGKILL runs no cleanup there): nothing is left to work for
        if message[0] == "cancel":
            controls.cancelled.add(message[1])
        elif message[0] == "stop":
            controls.stop.set()


def outcome(engine: Engine, model: str | None, blobs: BlobStore, send: Send, job_id: str, job: JobRequest,
            controls: Controls) -> tuple[Any, ...]:
    """Run one job, reporting its steps and previews through ``send``, and return its outcome message (the
    pictures read from ``blobs``; ``model``: the server's default, for jobs stored before models were fixed)."""
    try:
        outputs, notes = _generate(engine, model, blobs, send, job_id, job, controls)
    except _Cancelled:
        return ("cancelled",)
    except _Stopping:
        return ("stopped",)
    except Img2ImgError as exc:
        return ("failed", str(exc))
    except Exception as exc:  # a fault of ours: the job fails with a reason, the traceback goes to the log
        log.exception("job %s failed", job_id)
        return ("failed", f"internal error ({type(exc).__name__}: {exc})")
    return ("done", outputs, notes)


def _generate(engine: Engine, model: str | None, blobs: BlobStore, send: Send, job_id: str, job: JobRequest,
              controls: Controls) -> tuple[list[dict[str, Any]], list[str]]:
    from img2img.imageio.metadata import Metadata, save_options

    request = job.generation_request(blobs, model)
    diffusion = not engine.is_builtin(request.model)
    if diffusion and job.model_sha256:
        _check_model(engine, request.model, job.model_sha256)

    def on_progress(index: int, done: int, total: int) -> None:
        if job_id in controls.cancelled:
            raise _Cancelled
        if controls.stop.is_set():
            raise _Stopping
        send(("progress", index * total + done, total * request.num_images, diffusion))

    def on_preview(_index: int, image: Any) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=70)
        send(("preview", "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")))

    result = engine.generate(request, on_progress=on_progress, on_preview=on_preview)
    outputs = []
    for image, record in zip(result.images, result.records, strict=True):
        buffer = io.BytesIO()
        image.save(buffer, **save_options("png", Metadata(record.to_parameters_text(), record.to_json()), 0))
        outputs.append({"png": buffer.getvalue(), "seed": record.seed, "width": image.width,
                        "height": image.height, "parameters": record.to_parameters_text(),
                        "retention": record.retention, "strength": record.strength})
    search = [result.search.describe()] if result.search is not None else []  # how the strength was found
    return outputs, [*search, *result.notes]


def _check_model(engine: Engine, name: str, expected: str) -> None:
    """The job runs on the weights it was accepted with, or not at all."""
    found = engine.load(name).sha256
    if found != expected:
        raise ModelError(f"model {name} should have the weights the job was accepted with (sha256 {expected[:12]}), "
                         f"but its files changed (now {found[:12]}); submit the job again")
