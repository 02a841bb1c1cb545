"""``img2img describe``: a prompt for a picture, from what can be measured in it and, with models the user brings,
from a caption and the words a CLIP model ranks best."""

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

With a captioning model (a BLIP, BLIP-2, GIT or Florence-2 folder: --captioner, or one registered with img2img
models add) the prompt starts with its caption; with a CLIP model (--clip, or a registered one) it adds the best
matching medium, movement, artist and flavours from clip-interrogator's word lists. Without them the prompt says
nothing of what the picture shows, and says so.
"""


@app.command(help=DESCRIBE_HELP)
def describe(
    image: Annotated[Path, typer.Argument(help="The picture.")],
    style: Annotated[str, typer.Option(help="How to write the prompt: sd, midjourney or plain.")] = "sd",
    change: Annotated[str, typer.Option(help="The change you want: subtle, restyle or rework (the suggested "
                                              "strength follows).")] = "restyle",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: prompt, negative prompt, "
                                                         "measurements.")] = False,
    captioner: Annotated[str | None, typer.Option(help="A captioning model: a registered name or a folder; none: "
                                                       "measure only. [default: the registered one, if any]")] = None,
    clip: Annotated[str | None, typer.Option(help="A CLIP model that ranks words: a registered name or a folder; "
                                                  "none: no ranking. [default: the registered one, if any]")] = None,
) -> None:
    from img2img.engine.describe import describe as write
    from img2img.imageio.source import read_source
    from img2img.models.registry import ModelRegistry

    picture = read_source(image, field="IMAGE").rgb
    registry = ModelRegistry()
    uses_models = any(name not in (None, "none") for name in (captioner, clip)) or (
        (captioner is None and registry.addons("captioner")) or (clip is None and registry.addons("clip")))
    if uses_models:
        from img2img.api import Engine
        from img2img.cli.common import quiet_libraries

        quiet_libraries()
        described = Engine(device="cpu", registry=registry).describe(picture, style, change, captioner, clip)
    else:
        described = write(picture, style, change)
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
    if described.caption is None:
        typer.echo("measured only: no captioning model was used, so the prompt does not say what the picture shows")
        return
    models = described.models or {}
    typer.echo(f"caption ({models.get('captioner')}): {described.caption}")
    for name, terms in (described.ranked or {}).items():
        typer.echo(f"{name} ({models.get('clip')}): " + ", ".join(f"{term} {score:.3f}" for term, score in terms))
