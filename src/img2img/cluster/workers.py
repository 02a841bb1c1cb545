"""The Ray actors: each holds one engine, so its models load once and stay loaded across files and jobs.

They are plain classes here, made into actors by ``pool.start`` (``ray.remote(cls)``), so importing this
module needs no cluster. Both run on any node: what they read arrives as bytes, and what they make goes back
to the driver, which writes every file.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from img2img.errors import Img2ImgError, InvalidArgument

if TYPE_CHECKING:
    from PIL import Image

    from img2img.engine.request import GenerationRequest
    from img2img.engine.result import GenerationRecord
    from img2img.jobs.request import JobRequest


def _set_threads(threads: int) -> None:
    """PyTorch and OpenVINO use the cores Ray gave this actor, not every core of the node (which other actors
    share)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(max(1, threads))  # read by OpenVINO when it compiles (models/ov_runtime)
    torch.set_num_threads(max(1, threads))


def whereabouts() -> dict[str, Any]:
    """Where an actor runs: its process and node (for logs, leases and the tests that kill one)."""
    import ray

    return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}


@dataclass
class Delivery:
    """What a worker sends back for one request: its images and records, or the error that stopped it."""

    index: int  # the request's place in the driver's list
    images: list[Image.Image] = field(default_factory=list)
    records: list[GenerationRecord] = field(default_factory=list)
    image_seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: Img2ImgError | None = None
    message: str = ""  # the error's message, naming files by their paths on the driver
    worker: dict[str, Any] = field(default_factory=dict)

    def raise_error(self) -> None:
        """Raise the error that stopped the request, if any, worded as on the driver."""
        if self.error is None:
            return
        if isinstance(self.error, InvalidArgument):
            raise self.error
        raise type(self.error)(self.message)


class GenerationWorker:
    """The command line's worker: runs requests (a folder's files, a sweep's cells) one at a time."""

    def __init__(self, engine_arguments: dict[str, Any], threads: int) -> None:
        from img2img.api import Engine

        _set_threads(threads)
        self.engine = Engine(**engine_arguments)
        self.folder = Path(tempfile.mkdtemp(prefix="img2img-ray-"))
        self.where = whereabouts()

    def whereabouts(self) -> dict[str, Any]:
        return self.where

    def generate(self, index: int, request: GenerationRequest, changes: dict[str, Any] | None = None) -> Delivery:
        """Run a packed request (``parcel.pack``) with ``changes`` to its fields (a sweep's cell: the request is
        sent once and each cell as its few values); a user error comes back in the delivery, with the driver's
        file names in its message."""
        from img2img.cluster.parcel import unpack

        folder = Path(tempfile.mkdtemp(dir=self.folder))
        paths: dict[str, str] = {}
        try:
            request, paths = unpack(replace(request, **changes or {}), folder)
            result = self.engine.generate(request)
        except Img2ImgError as exc:
            return Delivery(index, error=exc, message=_as_on_driver(str(exc), paths), worker=self.where)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        notes = [_as_on_driver(note, paths) for note in result.notes]
        return Delivery(index, result.images, result.records, result.image_seconds, notes, worker=self.where)


def _as_on_driver(text: str, paths: dict[str, str]) -> str:
    """``text`` with the worker's copies of the files named by their paths on the driver."""
    for local, original in paths.items():
        text = text.replace(local, original)
    return text


class JobWorker:
    """The server's worker: runs queued jobs, streaming the same reports as the local worker process.

    ``run`` is a Ray streaming generator: it yields ``("progress", ...)`` and ``("preview", ...)`` as the job
    goes, then its outcome. The actor runs two threads, so that ``cancel`` and ``stop`` reach a running job,
    which asks between two steps.
    """

    def __init__(self, engine_arguments: dict[str, Any], threads: int, model: str | None) -> None:
        from img2img.api import Engine
        from img2img.jobs.worker import Controls

        _set_threads(threads)
        self.engine = Engine(**engine_arguments)
        self.model = model
        self.controls = Controls()
        self.folder = Path(tempfile.mkdtemp(prefix="img2img-ray-jobs-"))
        self.where = whereabouts()

    def whereabouts(self) -> dict[str, Any]:
        return self.where

    def cancel(self, job_id: str) -> None:
        self.controls.cancelled.add(job_id)

    def stop(self) -> None:
        self.controls.stop.set()

    def run(self, job_id: str, job: JobRequest, pictures: dict[str, bytes], root: str
            ) -> Iterator[tuple[Any, ...]]:
        """Run ``job`` with its ``pictures`` (blob name to bytes): its reports, then its outcome, whose words
        name the pictures as in the server's image store at ``root``."""
        from img2img.jobs.blobs import BlobStore
        from img2img.jobs.worker import outcome

        blobs = BlobStore(Path(tempfile.mkdtemp(dir=self.folder)))
        for name, data in pictures.items():
            if blobs.put(data, Path(name).suffix) != name:
                yield ("failed", f"internal error (picture {name} arrived altered)")
                return
        reports: queue.Queue[tuple[Any, ...]] = queue.Queue()
        ended: list[tuple[Any, ...]] = []

        def work() -> None:
            ended.append(outcome(self.engine, self.model, blobs, reports.put, job_id, job, self.controls))
            reports.put(("ended",))

        thread = threading.Thread(target=work, name=f"job-{job_id}", daemon=True)
        thread.start()
        try:
            while (report := reports.get()) != ("ended",):
                yield report
            yield _as_on_driver_outcome(ended[0], {str(blobs.root): root})
        finally:
            thread.join()
            self.controls.cancelled.discard(job_id)
            shutil.rmtree(blobs.root, ignore_errors=True)


def _as_on_driver_outcome(outcome: tuple[Any, ...], paths: dict[str, str]) -> tuple[Any, ...]:
    """A job's outcome with its notes or its error naming the server's files."""
    if outcome[0] == "done":
        return ("done", outcome[1], [_as_on_driver(note, paths) for note in outcome[2]])
    if outcome[0] == "failed":
        return ("failed", _as_on_driver(outcome[1], paths))
    return outcome
