"""A sweep's cells run in parallel on a Ray cluster, put back in grid order: the same grid as a run here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from img2img.api import Engine
from img2img.cluster.connect import connected
from img2img.cluster.parcel import pack
from img2img.cluster.pool import Shape, plan, spread
from img2img.engine.request import GenerationRequest
from img2img.engine.result import GenerationResult
from img2img.engine.seeds import resolve_seed
from img2img.sweep import AXES, Axis, SweepResult, sweep_cells


def sweep_on_ray(
    address: str, engine: Engine, request: GenerationRequest, axes: Sequence[Axis], workers: int | None,
    cpus_per_worker: int | None, on_start: Callable[[Shape], None], on_cell: Callable[[int], None],
) -> SweepResult:
    """``Engine.sweep`` with each cell run by whichever worker is free; ``on_start`` hears the workers' shape,
    ``on_cell`` the number of cells done as each one arrives."""
    request = request.validated(engine.max_images)
    base = replace(request, seed=resolve_seed(request.seed), num_images=1)
    cells = sweep_cells(base, axes)
    source = engine.read_source(request)  # a bad source is refused here, before the cluster is joined
    swept = [AXES[axis.name] for axis in axes]
    with connected(address) as ray:
        shape = plan(ray, engine.arguments["device"], workers, cpus_per_worker, len(cells))
        on_start(shape)
        packed = ray.put(pack(base))  # the pictures travel once; each cell sends only its own values
        found = []
        requests = [(packed, {name: getattr(pack(cell) if name == "control" else cell, name) for name in swept})
                    for cell in cells]  # a control weight's cells carry their units' pictures
        for delivery in spread(ray, engine.arguments, requests, shape):
            delivery.raise_error()
            found.append(delivery)
            on_cell(len(found))
    found.sort(key=lambda delivery: delivery.index)
    seconds = [second for delivery in found for second in delivery.image_seconds]
    notes = list(dict.fromkeys(note for delivery in found for note in delivery.notes))
    result = GenerationResult([image for delivery in found for image in delivery.images],
                              [record for delivery in found for record in delivery.records], sum(seconds), seconds,
                              notes)
    return SweepResult(tuple(axes), result, source.rgb)
