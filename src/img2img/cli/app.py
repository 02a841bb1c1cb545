"""The Typer applications; the commands attach themselves in the modules beside this one."""

from __future__ import annotations

import typer

MAIN_HELP = """Turn a source image into a new one with a prompt and a strength (0 keeps it, 1 ignores it).

[bold]Examples[/bold]

  img2img models add sd15 ~/models/v1-5-pruned-emaonly.safetensors
  img2img run photo.jpg "oil painting, thick brush strokes" --strength 0.5 --seed 42
  img2img run photo.jpg "watercolor" -n 4 --grid -o variations/
  img2img sweep photo.jpg "watercolor" --strength 0.3,0.5,0.7 --seed 42
  img2img batch holiday/ "pencil sketch" -o sketches/
  img2img info outputs/00001-42.png
  img2img serve --port 7860
"""

app = typer.Typer(help=MAIN_HELP, rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
models_app = typer.Typer(help="""Register model paths under short names and choose the default.

[bold]Examples[/bold]

  img2img models add sd15 ~/models/v1-5-pruned-emaonly.safetensors
  img2img models add xl ~/models/sdxl-base-folder --default
  img2img models list
  img2img models default xl
""", rich_markup_mode="rich", no_args_is_help=True)
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="""API keys for img2img serve: each has a name (its owner) and a tier.

[bold]Examples[/bold]

  img2img keys add alice --tier pro
  img2img keys list
  img2img keys remove alice
""", rich_markup_mode="rich", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
