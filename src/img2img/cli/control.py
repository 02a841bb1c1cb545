"""``img2img preprocess``: preview the control map a preprocessor makes of a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from img2img.cli import common as c
from img2img.cli.app import app

PREPROCESS_HELP = """Make the control map NAME of IMAGE (what a ControlNet unit's preprocessor does) and save it.

[bold]Examples[/bold]

  img2img preprocess canny photo.jpg -o edges.png --threshold-a 80 --threshold-b 160
  img2img preprocess scribble drawing.png -o scribble.png
  img2img preprocess --list

The maps come from classical filters that need no weights (lineart and softedge approximate the learned
detectors), except depth, which runs a DPT or Depth Anything folder you register (img2img models add NAME FOLDER).
Pose and segmentation need weights that no package here ships.
"""


@app.command(help=PREPROCESS_HELP)
def preprocess(
    name: Annotated[str | None, typer.Argument(help="The preprocessor (see --list).")] = None,
    image: Annotated[Path | None, typer.Argument(help="The picture.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="The map's file (.png, .jpg, .webp).")] = None,
    threshold_a: Annotated[float | None, typer.Option(help="The preprocessor's first setting (see --list).")] = None,
    threshold_b: Annotated[float | None, typer.Option(help="Its second setting.")] = None,
    seed: Annotated[int, typer.Option(help="The seed of shuffle's warp.")] = 0,
    overwrite: c.Overwrite = False,
    list_: Annotated[bool, typer.Option("--list", help="List the preprocessors and their settings.")] = False,
) -> None:
    from img2img.api import Engine
    from img2img.engine.preprocessors import PREPROCESSORS
    from img2img.errors import InvalidArgument
    from img2img.imageio.metadata import Metadata
    from img2img.imageio.output import save_image
    from img2img.imageio.source import read_source

    if list_:
        for entry in PREPROCESSORS.values():
            settings = "; ".join(f"{key}: {text}" for key, text in (("threshold-a", entry.threshold_a),
                                                                      ("threshold-b", entry.threshold_b)) if text)
            typer.echo(f"{entry.name:<10} {entry.help}" + (f" [{settings}]" if settings else ""))
        return
    if name is None or image is None or output is None:
        raise InvalidArgument("NAME", "a preprocessor, an IMAGE and -o FILE (or --list)", name)
    picture = Engine(device="cpu", dtype="float32", backend="torch").preprocess(
        name, read_source(image).rgb, threshold_a, threshold_b, seed)
    path = save_image(picture, output, Metadata(None, None), overwrite=overwrite)
    typer.echo(f"{path}  {name} map, {picture.width}x{picture.height}")
