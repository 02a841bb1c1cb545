"""What the commands share: option types, parsing of sizes and lists, output paths, progress and printing."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from img2img.engine.inpaint import INPAINT_SPEC
from img2img.engine.request import SPEC
from img2img.errors import InvalidArgument, OutputPathError

# Options shared by the commands that are not request fields (those derive from the field table: cli/options.py).
Model = Annotated[str | None, typer.Option(help=SPEC["model"].help)]
Size = Annotated[str | None, typer.Option(help=r"Output size WxH, multiples of 8 \[default: the source's size]",
                                          rich_help_panel="Generation")]
Format = Annotated[str | None, typer.Option("--format", help=r"png, jpeg or webp \[default: png or -o's suffix]")]
Quality = Annotated[int, typer.Option(help="JPEG/WebP quality 1..100 (WebP 100 is lossless).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]
Dtype = Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16")]
Backend = Annotated[str, typer.Option(help=r"auto, torch or openvino (CPU) \[default: $IMG2IMG_BACKEND or auto]",
                                      show_default=False)]
Quantize = Annotated[str, typer.Option(help="none, or int8: UNet matmul weights in 8 bits (approximate; OpenVINO).")]
AllowPickle = Annotated[bool, typer.Option(help="Allow pickled checkpoints (they can run code).")]
Overwrite = Annotated[bool, typer.Option(help="Replace existing output files.")]
Loras = Annotated[list[str] | None, typer.Option(
    "--lora", help="A LoRA as NAME or NAME:WEIGHT (repeatable); the same as <lora:NAME:WEIGHT> in the prompt.",
    rich_help_panel="Generation")]
StyleImage = Annotated[Path | None, typer.Option(help="A picture to take the style from (built-in engine).",
                                                rich_help_panel="Generation")]
Ray = Annotated[str | None, typer.Option(
    "--ray", metavar="ADDRESS", rich_help_panel="Ray cluster",
    help="Spread the work over a Ray cluster: auto (RAY_ADDRESS, or the cluster started on this machine), local "
         "(start one here), host:port or ray://host:10001. Every node needs img2img and the model.")]
RayWorkers = Annotated[int | None, typer.Option(
    "--ray-workers", min=1, rich_help_panel="Ray cluster",
    help=r"How many workers, each with the model loaded \[default: one per GPU, or per --cpus-per-worker cores]",
    show_default=False)]
CpusPerWorker = Annotated[int | None, typer.Option(
    "--cpus-per-worker", min=1, rich_help_panel="Ray cluster",
    help=r"CPU cores per worker on CPU nodes \[default: 8, or a whole smaller node]", show_default=False)]

FLAGS = {"source": "SOURCE", "axis": "sweep axis"}  # the arguments that are not request fields nor --their-name
NUMBERED = re.compile(r"^(\d{5})-")


def flag_for(argument: str) -> str:
    """How the command line spells a request field: its option, or a positional argument's own name (NAME)."""
    if argument.isupper():
        return argument
    if argument in SPEC:
        return SPEC[argument].option
    if argument in INPAINT_SPEC:
        return INPAINT_SPEC[argument].option
    if argument.startswith("control."):  # a unit's key: --control's KEY=VALUE
        return f"--control's {argument.removeprefix('control.')}"
    if argument.startswith("image_prompts"):  # FILE[:WEIGHT]
        return "--image-prompt" + ("'s weight" if argument.endswith(".weight") else "")
    return FLAGS.get(argument, f"--{argument.replace('_', '-')}")


def with_loras(prompt: str, loras: list[str] | None) -> str:
    """The prompt with a ``<lora:NAME:WEIGHT>`` tag for each --lora (A1111's syntax, which the engine reads)."""
    tags = []
    for lora in loras or []:
        name, _, weight = lora.rpartition(":") if ":" in lora else (lora, "", "1")
        try:
            float(weight)
        except ValueError as exc:
            raise InvalidArgument("lora", "NAME or NAME:WEIGHT such as watercolor:0.8", lora) from exc
        if not name or any(char in name for char in "<>:"):
            raise InvalidArgument("lora", "NAME or NAME:WEIGHT such as watercolor:0.8", lora)
        tags.append(f"<lora:{name}:{weight}>")
    return " ".join([prompt, *tags]) if tags else prompt


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise InvalidArgument("size", "WIDTHxHEIGHT such as 768x512", text)
    return int(match[1]), int(match[2])


def parse_list(name: str, text: str, kind: type) -> list:
    """``"0.4, 0.55,0.7"`` as a list of ``kind``; empty lists and unreadable items are errors naming ``name``."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InvalidArgument(name, "a non-empty list separated by commas", text)
    try:
        return [kind(item) for item in items]
    except ValueError as exc:
        example = "0.4,0.55,0.7" if kind is float else "1,2,3"
        raise InvalidArgument(name, f"{kind.__name__}s separated by commas such as {example}", text) from exc


def limit_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(name, "a whole number of at least 1", text)
    return int(text)


def output_format(output: Path | None, format_: str | None) -> str:
    """The format of the files to write: from --format, else from -o's suffix, else PNG."""
    from img2img.imageio.metadata import OUTPUT_FORMATS, format_name

    chosen = format_name(format_) if format_ is not None else None
    suffix = output.suffix.lower() if output is not None and not output.is_dir() else ""
    if suffix:
        from_suffix = OUTPUT_FORMATS.get(suffix)
        if from_suffix is None:
            raise OutputPathError(f"-o should end in .png, .jpg, .jpeg or .webp or be a folder, but got {output}")
        if chosen is not None and chosen != from_suffix:
            raise InvalidArgument("format", f"{from_suffix} to match -o {output.name}", format_)  # type: ignore[union-attr]
        return from_suffix
    return chosen or "png"


def output_paths(output: Path | None, count: int, format_: str) -> Callable[[int, int], Path]:
    """A function (index, seed) -> path, after checking that ``output`` can be written as asked.

    A folder gets A1111-style numbered names (00001-SEED.png, ...); a file name gets -SEED added for batches.
    A name with no suffix is a folder, made when it does not exist yet (its parent must).
    """
    from img2img.imageio.metadata import SUFFIXES
    from img2img.imageio.output import check_writable

    suffix = SUFFIXES[format_]
    if output is None:
        output = Path("outputs")
        try:
            output.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"-o should be a writable folder, but ./outputs cannot be made ({exc})") from exc
    if not output.suffix and not output.exists() and output.parent.is_dir():
        try:
            output.mkdir()
        except OSError as exc:
            raise OutputPathError(f"-o should be a writable folder, but {output} cannot be made ({exc})") from exc
    if output.is_dir():
        check_writable(output)
        first = next_number(output)
        return lambda index, seed: output / f"{first + index:05d}-{seed}{suffix}"
    if not output.parent.is_dir():
        raise OutputPathError(f"-o should be in an existing folder, but {output.parent} does not exist")
    check_writable(output.parent)
    if count == 1:
        return lambda index, seed: output
    return lambda index, seed: output.with_name(f"{output.stem}-{seed}{output.suffix}")


def next_number(folder: Path) -> int:
    numbers = [int(match[1]) for path in folder.iterdir() if (match := NUMBERED.match(path.name))]
    return max(numbers, default=0) + 1


def print_notes(notes: list[str]) -> None:
    err = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)
    for note in notes:
        err.print(f"[yellow]warning:[/yellow] {note}", markup=True)


def progress_bar(console: Console, unit: str):  # type: ignore[no-untyped-def]
    """A transient rich progress bar: description, bar, done/total UNIT, time spent and time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                    TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console, transient=True)


@contextmanager
def step_progress(console: Console, label: str = "denoising") -> Iterator[Callable[[int, int, int, int], None]]:
    """A progress bar over all images' steps; yields update(image, images, done, total)."""
    with progress_bar(console, "steps") as progress:
        task = progress.add_task(label, total=None)

        def update(image: int, images: int, done: int, total: int) -> None:
            progress.update(task, total=total * images, completed=image * total + done)

        yield update


def quiet_libraries() -> None:
    """Our own progress bar replaces the libraries' loading bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
