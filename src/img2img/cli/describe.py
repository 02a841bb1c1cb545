"""``img2img describe``: a prompt for a picture, from what can be measured in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from img2img.cli.app import app

DESCRIBE_HELP = """Write a prompt for IMAGE from what can be measured in it: its palette with colour names, its
light (brightness, contrast, colour temperature), its focus and noise, its orientation and aspect; and the strength
the usual table suggests for the change you want.

[bold]Examples[/bold]

  img2img describe photo.jpg
  img2img describe photo.jpg --style midjourney --change rework
  img2img describe photo.jpg --json

No captioning model is used: the prompt says nothing of what the picture shows, and says so.
"""


@app.command(help=DESCRIBE_HELP)
def describe(
    image: Annotated[Path, typer.Argument(help="The picture.")],
    style: Annotated[str, typer.Option(help="How to write the prompt: sd, midjourney or plain.")] = "sd",
    change: Annotated[str, typer.Option(help="The change you want: subtle, restyle or rework (the suggested "
                                              "strength follows).")] = "restyle",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: prompt, negative prompt, "
                                                         "measurements.")] = False,
) -> None:
    from img2img.engine.describe import describe as write
    from img2img.imageio.source import read_source

    described = write(read_source(image, field="IMAGE").rgb, style, change)
    if as_json:
        typer.echo(json.dumps(described.to_dict(), indent=2, ensure_ascii=False))
        return
    found = described.measurements
    typer.echo(described.prompt)
    typer.echo(f"Negative prompt: {described.negative_prompt}")
    palette = ", ".join(f"{swatch.name} {swatch.hex} {swatch.share:.0%}" for swatch in found.palette)
    typer.echo(f"palette: {palette}")
    light = ", ".join(found.words[key] for key in ("brightness", "contrast", "colour temperature"))
    typer.echo(f"light: brightness {found.brightness:.0f}/100, contrast {found.contrast:.1f}, "
               f"temperature {found.temperature:+.1f} ({light})")
    typer.echo(f"focus: sharpness {found.sharpness:.0f} ({found.words['sharpness']}), noise {found.noise:.2f} "
               f"({found.words['noise']})")
    typer.echo(f"shape: {found.width}x{found.height}, {found.orientation}, {found.aspect}")
    strength = described.strength
    typer.echo(f"strength for a {described.change}: {strength['low']:g} to {strength['high']:g} "
               f"(start at {strength['start']:g})")
    typer.echo("measured only: no captioning model was used, so the prompt does not say what the picture shows")
