"""The ``img2img`` command: a thin layer over ``img2img.Engine`` and the model registry.

Every error a user can cause ends as one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

# Typer parses with its own vendored click; its usage errors are these classes, not the click package's.
from typer import Abort
from typer._click.exceptions import BadParameter, NoArgsIsHelpError, UsageError

from img2img.errors import Img2ImgError, InvalidArgument, OutputPathError

MAIN_HELP = """Turn a source image into a new one with a prompt and a strength (0 keeps it, 1 ignores it).

[bold]Examples[/bold]

  img2img models add sd15 ~/models/v1-5-pruned-emaonly.safetensors
  img2img run photo.jpg "oil painting, thick brush strokes" --strength 0.5 --seed 42
  img2img run photo.jpg "watercolor" -n 4 -o variations/
  img2img samplers
"""

RUN_HELP = """Generate images from SOURCE guided by PROMPT.

[bold]Examples[/bold]

  img2img run photo.jpg "oil painting" --strength 0.5 --seed 42 -o painting.png
  img2img run photo.jpg "night, neon signs" -n 4 --sampler "Euler a" -o outputs/
  img2img run sketch.png "finished fantasy illustration" --strength 0.8 --model ./my-model-folder

Strength 0 returns the source unchanged; strength 1 ignores it (plain text-to-image). \
By default the last int(steps x strength) steps of a STEPS schedule run (diffusers' rule, at least one); \
--steps-mode exact runs exactly STEPS steps from the strength's noise level. Image k of a batch uses seed+k.
"""

FLAGS = {"guidance_scale": "--cfg", "num_images": "-n", "negative_prompt": "--negative",
         "steps_mode": "--steps-mode", "prompt": "PROMPT", "source": "SOURCE"}
IMAGE_SUFFIXES = (".png",)
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


def main() -> None:
    """Entry point: run the app and turn every user error into one line and exit status 2."""
    # The libraries below print progress bars and advice meant for developers; a CLI user needs neither.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    err = Console(stderr=True, soft_wrap=True, highlight=False)

    def fail(message: str) -> int:
        err.print(f"[red]error:[/red] {escape(message)}")
        return 2

    try:
        status = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        status = 0
    except BadParameter as exc:
        status = fail(_bad_parameter_message(exc))
    except UsageError as exc:
        status = fail(exc.format_message())
    except InvalidArgument as exc:
        flag = FLAGS.get(exc.argument, f"--{exc.argument.replace('_', '-')}")
        status = fail(f"{flag} should be {exc.expected}, but got {exc.received!r}")
    except Img2ImgError as exc:
        status = fail(str(exc))
    except (KeyboardInterrupt, Abort):
        err.print("interrupted")
        status = 130
    sys.exit(status if isinstance(status, int) else 0)


@app.command(help=RUN_HELP)
def run(
    source: Annotated[Path, typer.Argument(help="The source image.")],
    prompt: Annotated[str, typer.Argument(help="What the result should look like.")],
    negative: Annotated[str, typer.Option("--negative", help="What it should not look like.")] = "",
    strength: Annotated[float, typer.Option(help="0..1: how much of the source is replaced.")] = 0.6,
    seed: Annotated[int, typer.Option(help="-1 picks one at random.")] = -1,
    steps: Annotated[int | None, typer.Option(help="1..150 [default: the model's, 25 for SD]")] = None,
    cfg: Annotated[float | None, typer.Option("--cfg", help="Guidance 0..30 [default: the model's, 7 for SD]")] = None,
    sampler: Annotated[str | None, typer.Option(help="An A1111 sampler name [default: DPM++ 2M Karras]")] = None,
    model: Annotated[str | None, typer.Option(help="Registry name, path or cached repo id.")] = None,
    count: Annotated[int, typer.Option("-n", "--count", help="How many images (seeds seed..seed+n-1).")] = 1,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="A .png file or an existing folder.")] = None,
    steps_mode: Annotated[str, typer.Option(help="diffusers or exact")] = "diffusers",
    size: Annotated[str | None, typer.Option(help="Working size WxH, multiples of 8 [default: fits the model]")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16")] = "auto",
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled checkpoints (they can run code).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
) -> None:
    from img2img.api import Engine
    from img2img.engine.request import GenerationRequest
    from img2img.imageio.output import save_png
    from img2img.imageio.source import load_source

    _quiet_libraries()

    request = GenerationRequest(
        source=source, prompt=prompt, negative_prompt=negative, strength=strength, guidance_scale=cfg,
        steps=steps, sampler=sampler, seed=seed, num_images=count, steps_mode=steps_mode,  # type: ignore[arg-type]
        model=model, size=_parse_size(size) if size else None,
    )
    engine = Engine(device=device, dtype=dtype, max_images=_max_images(), allow_pickle=allow_pickle)
    request = request.validated(engine.max_images)
    targets = _output_paths(output, count)  # checked before any work is done
    load_source(source)  # a bad source is reported before a model is loaded
    console = Console()
    if strength > 0:
        with console.status("Loading model…"):
            loaded = engine.load(model)
        console.print(f"model [bold]{loaded.name}[/bold] ({loaded.family.label}) on {engine.placement.device}, "
                      f"{engine.placement.dtype_name}", highlight=False)
    with _progress(console) as progress:
        task = progress.add_task("denoising", total=None)

        def on_progress(image: int, done: int, total: int) -> None:
            progress.update(task, total=total * count, completed=image * total + done)

        result = engine.generate(request, on_progress)
    first = result.record
    console.print(f"{first.steps_run} of {first.steps} steps from sigma {first.start_sigma:.3g}, "
                  f"{first.sampler}, cfg {first.guidance_scale:g}, {first.working_width}x{first.working_height}",
                  highlight=False)
    for index, (image, record) in enumerate(zip(result.images, result.records, strict=True)):
        path = save_png(image, targets(index, record.seed), record, overwrite=overwrite)
        console.print(f"{path}  seed {record.seed}  {result.image_seconds[index]:.1f} s", highlight=False)


@app.command()
def samplers() -> None:
    """List the sampler names --sampler accepts (the default is marked)."""
    from img2img.engine.samplers import DEFAULT_SAMPLER, sampler_names

    for name in sampler_names():
        typer.echo(f"{name}{'  (default)' if name == DEFAULT_SAMPLER else ''}")


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="A short name for the model.")],
    path: Annotated[Path, typer.Argument(help="A diffusers folder or a .safetensors checkpoint.")],
    config: Annotated[Path | None, typer.Option(help="Diffusers config folder for an unusual checkpoint.")] = None,
    prediction: Annotated[str | None, typer.Option(help="epsilon or v_prediction, if detection is wrong.")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow a pickled checkpoint (it can run code).")] = False,
    default: Annotated[bool, typer.Option("--default", help="Make it the default model.")] = False,
) -> None:
    """Register a model under NAME after checking what it is."""
    from img2img.models.registry import ModelEntry, ModelRegistry

    if prediction not in (None, "epsilon", "v_prediction"):
        raise InvalidArgument("prediction", "epsilon or v_prediction", prediction)
    registry = ModelRegistry()
    entry = ModelEntry(name, str(path), str(config) if config else None, allow_pickle, prediction)  # type: ignore[arg-type]
    family = registry.add(entry)
    if default:
        registry.set_default(name)
    marker = " (default)" if registry.default_name() == name else ""
    typer.echo(f"added {name}: {family.label} at {Path(path).resolve()}{marker}")


@models_app.command("list")
def models_list() -> None:
    """List registered models, their families and paths."""
    from img2img.models.detect import inspect_model
    from img2img.models.registry import ModelRegistry

    registry = ModelRegistry()
    entries = registry.entries()
    if not entries:
        typer.echo("no models registered: add one with 'img2img models add NAME PATH'")
        return
    for entry in entries:
        try:
            label = inspect_model(Path(entry.path), name=entry.name, allow_pickle=entry.allow_pickle,
                                  prediction=entry.prediction).family.label
        except Img2ImgError as exc:
            label = f"unusable: {exc}"
        marker = "*" if entry.name == registry.default_name() else " "
        typer.echo(f"{marker} {entry.name}\t{label}\t{entry.path}")


@models_app.command("default")
def models_default(name: Annotated[str, typer.Argument(help="A registered model name.")]) -> None:
    """Make NAME the model used when --model is not given."""
    from img2img.models.registry import ModelRegistry

    ModelRegistry().set_default(name)
    typer.echo(f"default model: {name}")


@models_app.command("remove")
def models_remove(name: Annotated[str, typer.Argument(help="A registered model name.")]) -> None:
    """Forget NAME (its files are left alone)."""
    from img2img.models.registry import ModelRegistry

    ModelRegistry().remove(name)
    typer.echo(f"removed {name}")


def _quiet_libraries() -> None:
    """Our own progress bar replaces the libraries' loading bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _bad_parameter_message(exc: BadParameter) -> str:
    """Typer's message names the option and the expected type; add what the user typed."""
    message = exc.format_message()
    options = getattr(exc.param, "opts", []) if exc.param is not None else []
    arguments = sys.argv[1:]
    for index, word in enumerate(arguments):
        for option in options:
            if word == option and index + 1 < len(arguments):
                return f"{message} (got {arguments[index + 1]!r})"
            if word.startswith(option + "="):
                return f"{message} (got {word.partition('=')[2]!r})"
    return message


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise InvalidArgument("size", "WIDTHxHEIGHT such as 768x512", text)
    return int(match[1]), int(match[2])


def _max_images() -> int:
    from img2img.engine.request import DEFAULT_MAX_IMAGES

    text = os.environ.get("IMG2IMG_MAX_IMAGES", str(DEFAULT_MAX_IMAGES))
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument("IMG2IMG_MAX_IMAGES", "a whole number of at least 1", text)
    return int(text)


def _output_paths(output: Path | None, count: int):  # type: ignore[no-untyped-def]
    """A function (index, seed) -> path, after checking that ``output`` can be written as asked."""
    if output is None:
        output = Path("outputs")
        output.mkdir(exist_ok=True)
    if output.is_dir():
        first = _next_number(output)  # numbered like A1111: 00001-SEED.png, 00002-SEED.png, ...
        return lambda index, seed: output / f"{first + index:05d}-{seed}.png"
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise OutputPathError(f"-o should be a .png file or an existing folder, but got {output}")
    if not output.parent.is_dir():
        raise OutputPathError(f"-o should be in an existing folder, but {output.parent} does not exist")
    if count == 1:
        return lambda index, seed: output
    return lambda index, seed: output.with_name(f"{output.stem}-{seed}{output.suffix}")


def _next_number(folder: Path) -> int:
    numbers = [int(p.name[:5]) for p in folder.glob("[0-9][0-9][0-9][0-9][0-9]-*.png")]
    return max(numbers, default=0) + 1


def _progress(console: Console):  # type: ignore[no-untyped-def]
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                    TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console, transient=True)
