"""``img2img run`` (with variations, grids and loopback) and ``img2img sweep`` (the X/Y comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from img2img.cli import common as c
from img2img.cli.app import app
from img2img.cli.options import request_options
from img2img.engine.request import SPEC
from img2img.errors import InvalidArgument

if TYPE_CHECKING:
    from img2img.api import Engine
    from img2img.engine.request import GenerationRequest
    from img2img.engine.result import GenerationRecord
    from img2img.sweep import Axis, SweepResult

RUN_HELP = """Generate images from SOURCE guided by PROMPT.

[bold]Examples[/bold]

  img2img run photo.jpg "oil painting" --strength 0.5 --seed 42 -o painting.png
  img2img run photo.jpg "night, neon signs" -n 4 --grid --sampler "Euler a" -o outputs/
  img2img run photo.jpg "portrait, studio light" --size 512x768 --resize crop --format webp
  img2img run sketch.png "finished fantasy illustration" --strength 0.6 --loops 3 --loop-decay 0.8 --color-match
  img2img run photo.jpg "starry-swirl" --strength 0.8 --model builtin
  img2img run photo.jpg "" --style-image painting.jpg --strength 0.7
  img2img run photo.jpg "a red vintage car" --mask car-mask.png --strength 0.9 --inpaint-area masked
  img2img run photo.jpg "a wide beach at dusk" --outpaint right=256,left=256 --strength 1

With no model registered (or --model builtin) the built-in style engine restyles the photo: PROMPT names \
styles (img2img styles lists them) and --style-image takes the style from any picture. It adds no new content.

Strength 0 returns the source unchanged; strength 1 ignores it (plain text-to-image). \
By default the last int(steps x strength) steps of a STEPS schedule run (diffusers' rule, at least one); \
--steps-mode exact runs exactly STEPS steps from the strength's noise level. Image k of a batch uses seed+k. \
The output keeps the source's size unless --size or --max-side is given.

--mask repaints only the white part of the mask (pixels outside it and its blur stay exactly the source's); \
--outpaint grows the canvas and paints the new area. Inpainting models (9-channel UNets) are recognised and used \
as such; other models inpaint too.
"""

SWEEP_HELP = """Run PROMPT on SOURCE over every combination of the listed values and compare them in one grid.

[bold]Examples[/bold]

  img2img sweep photo.jpg "watercolor" --strength 0.4,0.55,0.7 --seed 42
  img2img sweep photo.jpg "watercolor" --strength 0.3,0.6 --cfg 5,7.5 --seeds 1,2
  img2img sweep photo.jpg "oil painting" --prompt "charcoal drawing" --prompt "pop art" --strength 0.5,0.7

Axes: --strength, --cfg, --steps, --sampler, --seeds, --prompt (repeat it; PROMPT comes first), \
--control-weights, --cache-steps, --merge-tokens and --image-cfg (edit models). \
The first axis given in that order runs along the columns, the others along the rows; the source is shown first \
in each row. Each image is saved with its own parameters, then the grid. The source and each prompt are encoded \
once for the whole sweep. With --ray the cells run in parallel on a Ray cluster's workers; the grid is the same.
"""


@app.command(help=RUN_HELP)
@request_options()
def run(
    source: Annotated[Path, typer.Argument(help="The source image.")],
    prompt: Annotated[str | None, typer.Argument(help="What the result should look like (optional with "
                                                      "--params-from).")] = None,
    params_from: Annotated[Path | None, typer.Option(
        "--params-from", help="Start from the parameters in this picture (ours, A1111, ComfyUI, InvokeAI, Fooocus, "
                              "NovelAI); the options given override them.")] = None,
    recipe: Annotated[str | None, typer.Option(help="A recipe (img2img recipes lists them): its prompt template "
                                                    "around PROMPT, its strength and negative prompt where you give "
                                                    "none.", rich_help_panel="Generation")] = None,
    grid: Annotated[bool, typer.Option(help="Also write a contact sheet of the images.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="An image file or an existing folder.")] = None,
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
    *,
    fields: dict[str, Any],
) -> None:
    from img2img.engine.request import SPEC, GenerationRequest

    given = {key: value for key, value in found_fields(params_from).items() if key in SPEC} | fields
    if prompt is not None:
        given["prompt"] = prompt
    if recipe is not None:  # its prompt, strength and negative prompt where the user gave none
        given = with_recipe(recipe, given)
    if "prompt" not in given:
        raise InvalidArgument("prompt", "given (or found in --params-from FILE)", None)
    given["prompt"] = c.with_loras(given["prompt"], lora)
    request = GenerationRequest(source=source, **given, size=c.parse_size(size), style_image=style_image)
    count = request.num_images
    engine, request, format_name = prepare(request, output, format_, quality, device, dtype, allow_pickle, backend,
                                           quantize)
    targets = c.output_paths(output, count, format_name)
    early_notes = source_notes(engine, request)  # a bad source or mask is reported before a model loads
    c.print_notes(early_notes)
    console = Console(emoji=False)
    announce_model(console, engine, request)
    with c.step_progress(console) as update:
        result = engine.generate(request, lambda image, done, total: update(image, count, done, total))
    first = result.record
    from img2img.imageio.retention import describe

    c.print_notes([note for note in result.notes if note not in early_notes])
    if result.search is not None:  # the strength found for --keep-structure/colour/detail
        (console.print if result.search.reachable else lambda line, **_: c.print_notes([line]))(
            result.search.describe(), highlight=False)
    console.print(summary(first), highlight=False)
    paths = []
    for index, (image, record) in enumerate(zip(result.images, result.records, strict=True)):
        paths.append(save(image, targets(index, record.seed), record, quality, overwrite))
        seconds = result.image_seconds[index]
        console.print(f"{paths[-1]}  seed {record.seed}  {seconds:.1f} s  {describe(record.retention)}",
                      highlight=False)
    if grid:
        from img2img.imageio.grid import contact_sheet

        sheet = contact_sheet(result.images, [f"seed {record.seed}" for record in result.records])
        grid_path = save(sheet, paths[0].with_name(f"{paths[0].stem}-grid{paths[0].suffix}"), first, quality,
                         overwrite)
        console.print(f"{grid_path}  grid of {len(paths)}", highlight=False)


@app.command(help=SWEEP_HELP)
@request_options(leave_out=("strength", "guidance_scale", "steps", "sampler", "cache_steps", "merge_tokens",
                            "image_cfg"))
def sweep(
    source: Annotated[Path, typer.Argument(help="The source image.")],
    prompt: Annotated[str, typer.Argument(help="The (first) prompt.")],
    strength: Annotated[str, typer.Option(help="Strengths, comma-separated.")] = str(SPEC["strength"].default),
    cfg: Annotated[str | None, typer.Option("--cfg", help="Guidance scales, comma-separated.")] = None,
    steps: Annotated[str | None, typer.Option(help="Step counts, comma-separated.")] = None,
    sampler: Annotated[str | None, typer.Option(help="Sampler names, comma-separated.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds, comma-separated.")] = None,
    control_weights: Annotated[str | None, typer.Option(
        help="Weights of the first --control unit, comma-separated.")] = None,
    cache_steps: Annotated[str | None, typer.Option(
        help="Step caching intervals, comma-separated (1: every step in full), to compare what each costs.")] = None,
    merge_tokens: Annotated[str | None, typer.Option(
        help="Token merging ratios, comma-separated (0: none), to compare what each costs.")] = None,
    image_cfg: Annotated[str | None, typer.Option(
        "--image-cfg", help="An edit model's image guidance scales, comma-separated.")] = None,
    prompts: Annotated[list[str] | None, typer.Option("--prompt", help="Another prompt (repeatable).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help=r"A folder \[default: ./outputs]")] = None,
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
    from img2img.sweep import make_axis

    if ray is not None:
        from img2img.cluster.connect import check_address

        check_address(ray)

    prompt = c.with_loras(prompt, lora)
    prompts = [c.with_loras(other, lora) for other in prompts or []]

    given = [("strength", c.parse_list("strength", strength, float)),
             ("cfg", c.parse_list("cfg", cfg, float) if cfg is not None else None),
             ("steps", c.parse_list("steps", steps, int) if steps is not None else None),
             ("sampler", c.parse_list("sampler", sampler, str) if sampler is not None else None),
             ("seed", c.parse_list("seeds", seeds, int) if seeds is not None else None),
             ("prompt", [prompt, *prompts] if prompts else None),
             ("control_weight", c.parse_list("control_weights", control_weights, float)
              if control_weights is not None else None),
             ("cache_steps", c.parse_list("cache_steps", cache_steps, int) if cache_steps is not None else None),
             ("merge_tokens", c.parse_list("merge_tokens", merge_tokens, float) if merge_tokens is not None else None),
             ("image_cfg", c.parse_list("image_cfg", image_cfg, float) if image_cfg is not None else None)]
    axes = [make_axis(name, values) for name, values in given if values is not None and len(values) > 1]
    fixed = {name: values[0] for name, values in given if values is not None and len(values) == 1}
    if not axes:
        axes = [make_axis("strength", given[0][1])]  # type: ignore[arg-type]
    fixed_fields = {"strength": fixed.get("strength"), "guidance_scale": fixed.get("cfg"), "steps": fixed.get("steps"),
                    "sampler": fixed.get("sampler"), "seed": fixed.get("seed"), "cache_steps": fixed.get("cache_steps"),
                    "merge_tokens": fixed.get("merge_tokens"), "image_cfg": fixed.get("image_cfg")}
    if "control_weight" in fixed and fields.get("control"):
        from dataclasses import replace

        first, *others = fields["control"]
        fields["control"] = (replace(first, weight=fixed["control_weight"]), *others)
    request = GenerationRequest(
        source=source, **fields | {key: value for key, value in fixed_fields.items() if value is not None},
        prompt=prompt, size=c.parse_size(size), style_image=style_image,
    )
    folder = output or Path("outputs")
    if folder.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        raise InvalidArgument("output", "a folder (a sweep writes several images and a grid)", str(folder))
    _make_folder(folder)
    engine, request, format_name = prepare(request, folder, format_, quality, device, dtype, allow_pickle, backend,
                                           quantize)
    from img2img.sweep import sweep_cells

    cells = len(sweep_cells(request, axes))  # checks every axis value before any work
    targets = c.output_paths(folder, cells, format_name)
    early_notes = source_notes(engine, request)
    c.print_notes(early_notes)
    console = Console(emoji=False)
    if ray is None:
        announce_model(console, engine, request)
        with c.step_progress(console) as update:
            swept = engine.sweep(request, axes, lambda image, done, total: update(image, cells, done, total))
    else:
        swept = _sweep_on_ray(console, ray, engine, request, axes, cells, ray_workers, cpus_per_worker)
    from img2img.imageio.retention import describe, short

    labels = [f"{column} · {row}" if row else column for row in swept.row_labels() for column in
              swept.column_labels()]
    for index, (image, record) in enumerate(zip(swept.result.images, swept.result.records, strict=True)):
        path = save(image, targets(index, record.seed), record, quality, overwrite)
        console.print(f"{path}  {labels[index]}  seed {record.seed}  {swept.result.image_seconds[index]:.1f} s  "
                      f"{describe(record.retention)}", highlight=False)
    from img2img.imageio.grid import labelled_grid

    rows = [[swept.source, *row] for row in swept.rows()]
    width = len(swept.column_labels())
    scores = [short(record.retention) for record in swept.result.records]
    captions = [["", *scores[start:start + width]] for start in range(0, len(scores), width)]
    sheet = labelled_grid(rows, ["source", *swept.column_labels()], swept.row_labels(), captions)
    grid_path = targets(cells, swept.result.records[0].seed)
    grid_path = save(sheet, grid_path.with_name(f"{grid_path.stem.split('-')[0]}-sweep{grid_path.suffix}"),
                     swept.result.record, quality, overwrite)
    console.print(f"{grid_path}  grid of {cells}", highlight=False)


def _sweep_on_ray(console: Console, address: str, engine: Engine, request: GenerationRequest, axes: list[Axis],
                  cells: int, workers: int | None, cpus_per_worker: int | None) -> SweepResult:
    """The sweep's cells spread over a Ray cluster's workers, with one bar for the cells done."""
    from img2img.cluster.sweep import sweep_on_ray

    with c.progress_bar(console, "cells") as progress:
        task = progress.add_task("sweep", total=cells)
        return sweep_on_ray(
            address, engine, request, axes, workers, cpus_per_worker,
            lambda shape: console.print(f"model [bold]{request.model or 'default'}[/bold] on {shape.describe()}",
                                        highlight=False),
            lambda done: progress.update(task, completed=done))


def found_fields(params_from: Path | None) -> dict[str, Any]:
    """Request fields from --params-from FILE (none without it), after printing what did not carry over."""
    if params_from is None:
        return {}
    from img2img.imageio.foreign import params_from as read_params

    found = read_params(params_from, "--params-from")
    c.print_notes(list(found.warnings))
    return found.fields


def prepare(
    request: GenerationRequest, output: Path | None, format_: str | None, quality: int, device: str, dtype: str,
    allow_pickle: bool, backend: str = "auto", quantize: str = "none",
) -> tuple[Engine, GenerationRequest, str]:
    """Check everything the user typed before a model is loaded."""
    from img2img.api import Engine
    from img2img.engine.request import DEFAULT_MAX_IMAGES
    from img2img.imageio.source import DEFAULT_MAX_PIXELS

    c.quiet_libraries()
    engine = Engine(device=device, dtype=dtype, backend=backend, quantize=quantize, allow_pickle=allow_pickle,
                    max_images=c.limit_from_env("IMG2IMG_MAX_IMAGES", DEFAULT_MAX_IMAGES),
                    max_source_pixels=c.limit_from_env("IMG2IMG_MAX_PIXELS", DEFAULT_MAX_PIXELS))
    request = request.validated(engine.max_images)
    if engine.is_builtin(request.model) and request.strength > 0:
        engine.check_styles(request)
    engine.check_addons([request])
    if not 1 <= quality <= 100:
        raise InvalidArgument("quality", "a whole number in [1, 100]", quality)
    format_name = c.output_format(output, format_)
    if request.keep_alpha and format_name == "jpeg":
        raise InvalidArgument("format", "png or webp with --keep-alpha (JPEG has no transparency)", format_name)
    return engine, request, format_name


def with_recipe(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The fields with the recipe's where they are not given (``img2img.recipes.apply``); its problems first."""
    from img2img.api import means_builtin
    from img2img.models.paths import config_dir
    from img2img.models.registry import ModelRegistry
    from img2img.recipes import apply, find_recipe

    recipe = find_recipe(name, config_dir())
    return apply(recipe, given, means_builtin(given.get("model"), ModelRegistry()))


def source_notes(engine: Engine, request: GenerationRequest) -> list[str]:
    """Read the source and the mask (refused now if bad) and return what to warn about."""
    source = engine.read_source(request)
    masking = engine.masking(request, source)
    return [*source.notes, *(masking.notes if masking is not None else ())]


def announce_model(console: Console, engine: Engine, request: GenerationRequest) -> None:
    if request.strength == 0:
        return
    if engine.is_builtin(request.model):
        engine.style_engine()  # checks the network files now
        console.print("model [bold]builtin-style[/bold] (built-in style transfer: restyles, adds no new content)",
                      highlight=False)
        return
    converting = " (a first load with OpenVINO also converts it: about a minute)" \
        if engine.placement.backend == "openvino" else ""
    with console.status(f"Loading model…{converting}"):
        loaded = engine.load(request.model)
    placement = loaded.placement  # where this model runs (SD 3 and Flux: PyTorch, whatever the engine's backend)
    backend = " with OpenVINO" if placement.backend == "openvino" else " with PyTorch" if loaded.family.flow else ""
    backend += (", T5 in int8 weights" if loaded.family.flow else ", int8 weights") if placement.quantize == "int8" \
        else ""
    console.print(f"model [bold]{loaded.name}[/bold] ({loaded.family.label}) on {placement.device}, "
                  f"{placement.dtype_name}{backend}", highlight=False)


def summary(record: GenerationRecord) -> str:
    """One line on what ran: steps and noise level for diffusion, the style and strength for the style engine."""
    loops = f", {record.loops} loops" if record.loops > 1 else ""
    if record.engine == "style":
        pictures = len(record.image_prompt["images"]) if record.image_prompt else 0
        named = f"{pictures} reference picture{'s' if pictures > 1 else ''}" if pictures else "the style image"
        style = f"{record.prompt!r}" if record.prompt else named
        extra = f" and {named}" if record.prompt and (record.style_image_sha256 or pictures) else ""
        return (f"restyled with {style}{extra} by builtin-style at strength {record.strength:g}, "
                f"{record.working_width}x{record.working_height}{loops}")
    image_cfg = f", image cfg {record.request.image_cfg:g}" if record.request.image_cfg is not None else ""
    return (f"{record.steps_run} of {record.steps} steps from sigma {record.start_sigma:.3g}, {record.sampler}, "
            f"cfg {record.guidance_scale:g}{image_cfg}, {record.working_width}x{record.working_height}{loops}")


def save(image: object, path: Path, record: GenerationRecord, quality: int, overwrite: bool) -> Path:
    from img2img.imageio.metadata import Metadata
    from img2img.imageio.output import save_image

    metadata = Metadata(record.to_parameters_text(), record.to_json())
    return save_image(image, path, metadata, quality=quality, overwrite=overwrite)  # type: ignore[arg-type]


def _make_folder(folder: Path) -> None:
    from img2img.errors import OutputPathError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"-o should be a folder that can be made, but {folder} cannot ({exc.strerror})") from exc
