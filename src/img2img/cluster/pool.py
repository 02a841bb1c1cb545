"""How many workers the cluster holds, starting them, and spreading requests over them.

Plain actors rather than Ray Data: each file is one request that takes seconds, the driver must see each
outcome on its own (to write it, report a bad file and carry on, and move one progress bar), and the inputs are
a few pictures rather than a table. Ray Data's blocks, Arrow batches and backpressure answer another question
(millions of small rows through a pipeline) and would bring pyarrow and pandas along. ``ray.util.ActorPool``
hands the next request to whichever worker is free, so a slow image never holds the others up.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from img2img.errors import InvalidArgument

DEFAULT_CPUS_PER_WORKER = 8  # PyTorch's CPU kernels gain little beyond this many threads for one image
READY_TIMEOUT_S = 600.0  # a worker that has not started by then (no room, or a node that cannot import img2img)
RETRIES = 3  # a command-line worker that dies is restarted and its request run again this many times


@dataclass(frozen=True)
class Shape:
    """The workers to start: how many, and what each one holds of a node."""

    workers: int
    cpus: int
    gpus: int

    def describe(self) -> str:
        each = f"{self.gpus} GPU" if self.gpus else f"{self.cpus} CPU core{'s' if self.cpus > 1 else ''}"
        return f"{self.workers} Ray worker{'s' if self.workers > 1 else ''} ({each} each)"


def plan(ray: ModuleType, device: str, workers: int | None, cpus_per_worker: int | None, items: int) -> Shape:
    """One worker per GPU when the cluster has GPUs (and the device is not cpu), else one per ``cpus_per_worker``
    cores of each node; at most ``workers`` and no more than there are requests."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    gpus = sum(int(node.get("GPU", 0)) for node in nodes)
    if gpus and device != "cpu":
        shape = Shape(gpus, 1, 1)
    else:
        largest = max((int(node.get("CPU", 0)) for node in nodes), default=0)
        cpus = cpus_per_worker or max(1, min(DEFAULT_CPUS_PER_WORKER, largest))
        if cpus > largest:
            raise InvalidArgument("cpus_per_worker", f"at most {largest} (the most CPU cores one node of the cluster "
                                  "has)", cpus)
        shape = Shape(sum(int(node.get("CPU", 0)) // cpus for node in nodes), cpus, 0)
    if workers is not None:
        if workers > shape.workers:
            raise InvalidArgument("ray_workers", f"at most {shape.workers} (what the cluster holds at "
                                  f"{shape.cpus} CPU cores or 1 GPU each)", workers)
        shape = Shape(workers, shape.cpus, shape.gpus)
    return Shape(max(1, min(shape.workers, items)), shape.cpus, shape.gpus)


def start(ray: ModuleType, cls: type, shape: Shape, args: Sequence[Any], **options: Any) -> list[Any]:
    """``shape.workers`` actors of ``cls`` made with ``args``, once every one is ready (models load later, on
    their first request)."""
    actor = ray.remote(cls).options(num_cpus=shape.cpus, num_gpus=shape.gpus, **options)
    actors = [actor.remote(*args) for _ in range(shape.workers)]
    try:
        ray.get([handle.whereabouts.remote() for handle in actors], timeout=READY_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as exc:
        for handle in actors:
            ray.kill(handle)
        raise InvalidArgument("ray", f"a cluster with room for {shape.describe()}", "none started in "
                              f"{READY_TIMEOUT_S:.0f} s") from exc
    return actors


def spread(ray: ModuleType, engine_arguments: dict[str, Any], requests: Sequence[tuple[Any, dict[str, Any]]],
           shape: Shape) -> Iterator[Any]:
    """The ``Delivery`` of each request, as soon as any worker finishes it. A request is a packed request (see
    ``parcel.pack``), or a reference to one in the object store (``ray.put``), with changes to its fields."""
    from img2img.cluster.workers import GenerationWorker

    actors = start(ray, GenerationWorker, shape, (engine_arguments, shape.cpus), max_restarts=RETRIES,
                   max_task_retries=RETRIES)
    try:
        pool = ray.util.ActorPool(actors)
        yield from pool.map_unordered(lambda actor, item: actor.generate.remote(item[0], *item[1]),
                                      list(enumerate(requests)))
    finally:
        for handle in actors:
            ray.kill(handle)
