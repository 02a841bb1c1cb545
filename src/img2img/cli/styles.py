"""``img2img styles``: the built-in engine's named styles, and a labelled sheet of them on your photo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from img2img.cli import common as c
from img2img.cli.app import app

SHEET_CELL = 320  # the long side of each sample on the sheet


@app.command()
def styles(
    sheet: Annotated[Path | None, typer.Option(help="Render every style on this photo, labelled.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where the sheet goes.")] = Path("styles-sheet.png"),
    strength: Annotated[float, typer.Option(help="0..1 for every sample on the sheet.")] = 1.0,
    seed: Annotated[int, typer.Option(help="The seed of every sample on the sheet.")] = 0,
    overwrite: c.Overwrite = False,
) -> None:
    """List the built-in style engine's styles (use their names as the prompt), or render them on a photo.

    [bold]Examples[/bold]

      img2img styles
      img2img styles --sheet photo.jpg -o sheet.png
      img2img run photo.jpg "starry-swirl" --strength 0.8
      img2img run photo.jpg "ink-drawing + frost-wash" --seed 3

    Several names separated by "," or "+" blend (weights as name:2); the seed varies a blend.
    """
    from img2img.styles.catalog import BLENDS, STYLES

    if sheet is None:
        width = max(len(name) for name in [*(s.name for s in STYLES), *BLENDS])
        for style in STYLES:
            typer.echo(f"{style.name:<{width}}  {style.description}")
        for name, (description, _) in BLENDS.items():
            typer.echo(f"{name:<{width}}  blend: {description}")
        return
    _render_sheet(sheet, output, strength, seed, overwrite)


def _render_sheet(photo: Path, output: Path, strength: float, seed: int, overwrite: bool) -> None:
    from PIL import Image
    from rich.console import Console

    from img2img.api import Engine
    from img2img.engine.request import GenerationRequest
    from img2img.imageio.grid import contact_sheet
    from img2img.imageio.metadata import Metadata, format_of
    from img2img.imageio.output import save_image
    from img2img.styles.catalog import style_names

    format_of(output)
    engine = Engine()
    source = engine.read_source(GenerationRequest(source=photo, prompt=""))
    small = source.rgb.copy()
    small.thumbnail((SHEET_CELL, SHEET_CELL), Image.LANCZOS)
    names = style_names()
    samples = [small]
    with c.step_progress(Console(), "styles") as update:
        for index, name in enumerate(names):
            request = GenerationRequest(source=small, prompt=name, strength=strength, seed=seed, model="builtin")
            samples.append(engine.generate(request).images[0])
            update(index, len(names), 1, 1)
    sheet = contact_sheet(samples, ["source", *names])
    written = save_image(sheet, output, Metadata(f"img2img styles sheet of {photo.name}", None), overwrite=overwrite)
    typer.echo(f"{written}  {len(names)} styles on {photo.name}")
