"""``img2img batch``: restyle every image in a folder, resumably, carrying on past bad files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from img2img.cli import common as c
from img2img.cli.app import app
from img2img.cli.generate import _make_folder, announce_model, prepare, save
from img2img.cli.options import request_options
from img2img.errors import InvalidArgument, SourceImageError

if TYPE_CHECKING:
    from img2img.api import Engine
    from img2img.engine.request import GenerationRequest
    from img2img.engine.result import GenerationResult

# Each outcome of a batch: the source's index, and its result or the reason it failed.
Outcome = tuple[int, "GenerationResult | None", str]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

BATCH_HELP = """Run PROMPT on every image in IN_DIR and write the results to OUT_DIR under the same names.

[bold]Examples[/bold]

  img2img batch holiday/ "watercolor painting" -o watercolors/ --strength 0.5 --seed 42
  img2img batch scans/ "clean line art" -o clean/ --format webp --quality 95

Every image uses the same seed (given, or one picked at random), so the folder gets a consistent look. Results \
that already exist are skipped, so an interrupted batch resumes where it stopped; --overwrite redoes them. \
A file that cannot be read is reported at the end and does not stop the others; the exit status is then 1.

With --ray the files are spread over workers of a Ray cluster, each with the model loaded once; this machine \
sends the pictures and writes the results as they arrive, the same files as a run here.
"""


@app.command(help=BATCH_HELP)
@request_options(leave_out=("num_images",))
def batch(
    in_dir: Annotated[Path, typer.Argument(help="A folder of source images.")],
    prompt: Annotated[str, typer.Argument(help="What the results should look like.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The folder for the results (made if missing).")],
    format_: c.Format = None,
    quality: c.Quality = 90,
    size: c.Size = None,
    style_image: c.StyleImage = None,
    lora: c.Loras = None,
    device: c.Device = "auto",
    dtype: c.Dtype = "auto",
    backend: c.Backend = "auto",
    quantize: c.Quantize = "none",
    allow_pickle: c.AllowPickle = False,
    overwrite: c.Overwrite = False,
    ray: c.Ray = None,
    ray_workers: c.RayWorkers = None,
    cpus_per_worker: c.CpusPerWorker = None,
    *,
    fields: dict[str, Any],
) -> None:
    from img2img.engine.request import GenerationRequest
    from img2img.engine.seeds import resolve_seed
    from img2img.imageio.metadata import SUFFIXES
    from img2img.imageio.retention import describe

    if not in_dir.is_dir():
        raise InvalidArgument("IN_DIR", "a folder of images", str(in_dir))
    sources = sorted(p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                     and not p.name.startswith("."))
    if not sources:
        raise InvalidArgument("IN_DIR", f"a folder with images ({', '.join(IMAGE_SUFFIXES)})", str(in_dir))
    if ray is not None:
        from img2img.cluster.connect import check_address

        check_address(ray)
    _make_folder(output)
    seed = resolve_seed(fields.pop("seed", None))  # one seed for the whole folder
    request = GenerationRequest(source=sources[0], prompt=c.with_loras(prompt, lora), **fields, seed=seed,
                                size=c.parse_size(size), style_image=style_image)
    engine, request, format_name = prepare(request, output, format_, quality, device, dtype, allow_pickle, backend,
                                           quantize)
    targets = _target_names(sources, output, SUFFIXES[format_name])
    console = Console(emoji=False)
    skipped = [source for source, target in zip(sources, targets, strict=True) if target.exists() and not overwrite]
    todo = [(source, target) for source, target in zip(sources, targets, strict=True) if source not in skipped]
    requests = [replace(request, source=source) for source, _ in todo]
    if ray is None:
        announce_model(console, engine, request)
    done, failed = [], []
    with c.progress_bar(console, "images") as progress:
        task = progress.add_task("batch", total=len(sources), completed=len(skipped))
        outcomes = _here(engine, requests) if ray is None else _on_ray(
            console, ray, engine, requests, ray_workers, cpus_per_worker)
        for index, result, reason in outcomes:
            source, target = todo[index]
            progress.update(task, description=escape(source.name))
            if result is None:
                failed.append((source, reason))
            else:
                c.print_notes(result.notes)
                path = save(result.images[0], target, result.record, quality, overwrite)
                done.append(source)
                aimed = f"  strength {result.record.strength:g}" if result.search is not None else ""
                console.print(f"{path}  {result.image_seconds[0]:.1f} s{aimed}  {describe(result.record.retention)}",
                              highlight=False)
            progress.advance(task)
    console.print(f"done {len(done)}, skipped {len(skipped)} (already there), failed {len(failed)}", highlight=False)
    for source, reason in failed:
        console.print(f"  failed {escape(source.name)}: {escape(reason)}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _here(engine: Engine, requests: list[GenerationRequest]) -> Iterator[Outcome]:
    """Each request run on this machine, in order."""
    for index, request in enumerate(requests):
        try:
            yield index, engine.generate(_with_mask(request)), ""
        except SourceImageError as exc:
            yield index, None, str(exc)


def _on_ray(console: Console, address: str, engine: Engine, requests: list[GenerationRequest], workers: int | None,
            cpus_per_worker: int | None) -> Iterator[Outcome]:
    """Each request run by a worker of the Ray cluster at ``address``, in the order they finish."""
    from img2img.cluster.connect import connected
    from img2img.cluster.parcel import pack
    from img2img.cluster.pool import plan, spread
    from img2img.engine.result import GenerationResult

    packed, places = [], []
    for index, request in enumerate(requests):
        try:
            packed.append((pack(_with_mask(request)), {}))
            places.append(index)
        except SourceImageError as exc:
            yield index, None, str(exc)
    if not packed:
        return
    with connected(address) as ray:
        shape = plan(ray, engine.arguments["device"], workers, cpus_per_worker, len(packed))
        console.print(f"model [bold]{requests[0].model or 'default'}[/bold] on {shape.describe()}", highlight=False)
        for delivery in spread(ray, engine.arguments, packed, shape):
            if delivery.error is not None and not isinstance(delivery.error, SourceImageError):
                raise delivery.error  # the model, a LoRA, a limit: every file would fail the same way
            result = None if delivery.error is not None else GenerationResult(
                delivery.images, delivery.records, sum(delivery.image_seconds), delivery.image_seconds,
                delivery.notes)
            yield places[delivery.index], result, delivery.message


def _with_mask(request: GenerationRequest) -> GenerationRequest:
    """With --mask FOLDER, the request with the mask named as its source (any image suffix)."""
    inpaint = request.inpaint
    if inpaint is None or not isinstance(inpaint.mask, Path) or not inpaint.mask.is_dir():
        return request
    stem = Path(str(request.source)).stem
    found = sorted(path for path in inpaint.mask.iterdir() if path.stem == stem and path.suffix.lower() in
                   IMAGE_SUFFIXES)
    if not found:
        raise SourceImageError(f"mask should be in {inpaint.mask} as {stem}.png (or another image suffix), but "
                               "there is none")
    return replace(request, inpaint=replace(inpaint, mask=found[0]))


def _target_names(sources: list[Path], folder: Path, suffix: str) -> list[Path]:
    """Each result takes its source's name; sources that share a stem (a.png, a.jpg) keep their extension too."""
    stems = [source.stem for source in sources]
    return [folder / (f"{source.stem}{suffix}" if stems.count(source.stem) == 1 else
                      f"{source.stem}-{source.suffix.lstrip('.').lower()}{suffix}") for source in sources]
