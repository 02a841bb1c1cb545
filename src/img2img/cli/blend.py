"""``img2img blend``: 2 to 5 pictures made into one, as Midjourney's /blend."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from img2img.cli import common as c
from img2img.cli.app import app
from img2img.cli.options import request_options
from img2img.engine.image_prompt import MAX_BLEND
from img2img.errors import InvalidArgument

BLEND_HELP = f"""Blend 2 to {MAX_BLEND} PICTURES into one, as Midjourney's /blend.

[bold]Examples[/bold]

  img2img blend cat.jpg painting.jpg -o blended.png
  img2img blend portrait.jpg storm.jpg ink.jpg --weights 2,1,1 --grid --seed 7
  img2img blend a.jpg b.jpg --prompt "a castle at dusk" --model sd15 --ip-adapter ip-adapter_sd15 -n 4

With a diffusion model and an IP-Adapter (--ip-adapter) the pictures' image embeddings, mixed by --weights, are \
the image prompt, and the result starts from the first picture at --strength (1: from noise, at the first \
picture's aspect). With the built-in engine (no model installed, or --model builtin) the first picture gives \
the content and the weighted mix of all the pictures' styles gives the look; seeds vary the mix. \
--grid also writes the pictures and the result side by side.
"""


@app.command(help=BLEND_HELP)
@request_options(leave_out=("strength", "image_prompt_combine"))
def blend(
    pictures: Annotated[list[Path], typer.Argument(help=f"2 to {MAX_BLEND} pictures; the first gives the size.")],
    prompt: Annotated[str, typer.Option(help="What the blend should show as well (with a diffusion model; built-in "
                                             "engine: style names).")] = "",
    weights: Annotated[str | None, typer.Option(help="Relative weights, comma-separated (2,1: the first counts "
                                                     "twice).")] = None,
    strength: Annotated[float, typer.Option(help="How much of the first picture is replaced (1: all of it).")] = 1.0,
    grid: Annotated[bool, typer.Option(help="Also write the pictures and the result side by side.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="An image file or an existing folder.")] = None,
    format_: c.Format = None,
    quality: c.Quality = 90,
    size: c.Size = None,
    device: c.Device = "auto",
    dtype: c.Dtype = "auto",
    backend: c.Backend = "auto",
    quantize: c.Quantize = "none",
    allow_pickle: c.AllowPickle = False,
    overwrite: c.Overwrite = False,
    *,
    fields: dict[str, Any],
) -> None:
    from img2img.cli.generate import announce_model, prepare, save, source_notes, summary
    from img2img.engine.image_prompt import blend_prompts
    from img2img.engine.request import GenerationRequest

    if fields.get("image_prompts"):
        raise InvalidArgument("image_prompt", "left out of a blend (its PICTURES are the image prompts)",
                              len(fields["image_prompts"]))
    shares = c.parse_list("weights", weights, float) if weights is not None else None
    prompts = blend_prompts(list(pictures), shares, "PICTURES", "weights")
    request = GenerationRequest(source=pictures[0], **{"prompt": prompt, **fields}, strength=strength,
                                image_prompts=prompts, image_prompt_combine="average", size=c.parse_size(size))
    engine, request, format_name = prepare(request, output, format_, quality, device, dtype, allow_pickle, backend,
                                           quantize)
    for picture in pictures[1:]:  # every picture is read (and refused if bad) before a model loads
        engine.read_source(replace(request, source=picture))
    early_notes = source_notes(engine, request)
    c.print_notes(early_notes)
    console = Console(emoji=False)
    announce_model(console, engine, request)
    count = request.num_images
    targets = c.output_paths(output, count, format_name)
    with c.step_progress(console) as update:
        result = engine.generate(request, lambda image, done, total: update(image, count, done, total))
    c.print_notes([note for note in result.notes if note not in early_notes])
    console.print(summary(result.record), highlight=False)
    paths = [save(image, targets(index, record.seed), record, quality, overwrite)
             for index, (image, record) in enumerate(zip(result.images, result.records, strict=True))]
    for path, record, seconds in zip(paths, result.records, result.image_seconds, strict=True):
        console.print(f"{path}  seed {record.seed}  {seconds:.1f} s", highlight=False)
    if grid:
        sheet = blend_sheet([engine.read_source(replace(request, source=p)).rgb for p in pictures], prompts,
                            result.images)
        grid_path = save(sheet, paths[0].with_name(f"{paths[0].stem}-blend{paths[0].suffix}"), result.record,
                         quality, overwrite)
        console.print(f"{grid_path}  the pictures and the blend", highlight=False)


def blend_sheet(pictures: list[Any], prompts: tuple[Any, ...], results: list[Any]) -> Any:
    """The pictures (each fitted into the result's frame, with its share of the mix) and the results, in one
    labelled row."""
    from PIL import ImageOps

    from img2img.imageio.grid import labelled_grid

    frame = results[0].size
    cells = [ImageOps.pad(picture.convert("RGB"), frame, color="white") for picture in pictures] + list(results)
    total = sum(prompt.weight for prompt in prompts)
    labels = [f"{chr(65 + index)}  {prompt.weight / total:.0%}" for index, prompt in enumerate(prompts)]
    labels += ["blend" if len(results) == 1 else f"blend {index + 1}" for index in range(len(results))]
    return labelled_grid([cells], labels, [""])
