"""``img2img recipes``: the kinds of change with the strength that suits each, the built-in ones and the user's."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from img2img.cli import common as c
from img2img.cli.app import app


@app.command()
def recipes(
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """List the recipes: each a prompt template, a strength (or a retention target) and the built-in engine's style.

    [bold]Examples[/bold]

      img2img recipes
      img2img run photo.jpg --recipe watercolour-portrait
      img2img run photo.jpg "an old harbour" --recipe rainy-night-street --seed 3

    Add your own as [recipes.NAME] tables in recipes.toml in the config folder (see the README); a mistake there is
    reported one line each, and the other recipes still load.
    """
    from img2img.models.paths import config_dir
    from img2img.recipes import load_recipes

    found, problems = load_recipes(config_dir())
    c.print_notes(problems)
    if as_json:
        typer.echo(json.dumps([recipe.describe() for recipe in found.values()], indent=2, ensure_ascii=False))
        return
    width = max(len(name) for name in found)
    for recipe in found.values():
        aim = f"keep {recipe.keep[0]} {recipe.keep[1]:g}" if recipe.keep else f"strength {recipe.strength:g}"
        own = "" if recipe.origin == "built-in" else "  (yours)"
        typer.echo(f"{recipe.name:<{width}}  {aim:<19}  {recipe.description}{own}")
