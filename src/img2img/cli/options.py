"""The request's options on the command line, derived from the field table (``img2img.engine.request.FIELDS``).

``@request_options(...)`` gives a command one option per request field, spelled as the field's spec says, with
its help, range and default. The command receives the options the user gave as ``fields`` (a dict, left-out
options absent), so that the request's own defaults, or a file's parameters (``--params-from``), fill the rest.
A new field in the table is an option of run, sweep and batch with no change here.

The inpainting part's fields (``img2img.engine.inpaint.INPAINT_FIELDS``) are options too, in their own help panel,
beside ``--mask`` and ``--outpaint``; given a mask or an outpaint, ``fields["inpaint"]`` holds the ``Inpaint``.
``--control`` (repeatable) gives ``fields["control"]``, the ``ControlUnit`` objects; ``--image-prompt``
(repeatable) gives ``fields["image_prompts"]``, the ``ImagePrompt`` objects.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from img2img.engine.control import parse_unit
from img2img.engine.fields import FieldSpec
from img2img.engine.image_prompt import MAX_IMAGE_PROMPTS, parse_image_prompt
from img2img.engine.inpaint import ALPHA, INPAINT_FIELDS, Inpaint, parse_outpaint
from img2img.engine.request import FIELDS
from img2img.errors import InvalidArgument

F = TypeVar("F", bound=Callable[..., None])
ALIASES = {"num_images": ("--count",)}  # older spellings that stay accepted


MASK_HELP = ("A mask image (white repaints, black keeps, grey blends; resized to the source), or alpha: the "
             "source's transparent pixels. batch: a folder of masks named as the sources, or one for all.")
OUTPAINT_HELP = "Grow the canvas and paint the new area: 128 (every side) or right=256,bottom=128."
PANEL = "Inpainting"
CONTROL_HELP = ("A ControlNet or T2I-Adapter unit: model=NAME (registered, in the ControlNet folder, or a path), "
                "and any of image=FILE (default: the source), preprocessor (img2img preprocess --list), weight 0..2, "
                "start, end, mode (balanced, prompt, control), resize (just, crop, fill), threshold_a, threshold_b. "
                "Up to 3.")
IMAGE_PROMPT_HELP = (f"A reference picture whose look steers the result, with a weight 0..2 (default 1), like "
                     f"Midjourney's --iw: ref.png or ref.png:0.6. Up to {MAX_IMAGE_PROMPTS}. Needs --ip-adapter with a "
                     "diffusion model; the built-in engine takes it as a style picture.")
IMAGE_PROMPT_PANEL = "Image prompts"
IMAGE_PROMPT_FIELDS = ("ip_adapter", "image_prompt_mode", "image_prompt_combine")


def request_options(*, leave_out: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Add an option for every request field but the positional PROMPT and those in ``leave_out``, and the
    inpainting options."""
    specs = [spec for spec in FIELDS if spec.name not in leave_out and spec.option.startswith("-")]
    inpaint_specs = list(INPAINT_FIELDS)

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [param.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, param in signature.parameters.items()
               if name != "fields"]  # typer passes every value by name, so any order of defaults will do
        arguments = [param for param in own if _is_argument(param)]
        added = [inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_option(
            spec, IMAGE_PROMPT_PANEL if spec.name in IMAGE_PROMPT_FIELDS else "Generation")) for spec in specs]
        added += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            str | None, typer.Option(f"--{name}", help=text, rich_help_panel=PANEL, show_default=False)])
            for name, text in (("mask", MASK_HELP), ("outpaint", OUTPAINT_HELP))]
        added += [inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=_option(spec, PANEL)) for spec in inpaint_specs]
        added.append(inspect.Parameter("control", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            list[str] | None, typer.Option("--control", help=CONTROL_HELP, rich_help_panel="Control",
                                           show_default=False, metavar="KEY=VALUE,...")]))
        added.append(inspect.Parameter("image_prompt", inspect.Parameter.KEYWORD_ONLY, default=None,
                                       annotation=Annotated[list[str] | None, typer.Option(
                                           "--image-prompt", help=IMAGE_PROMPT_HELP, rich_help_panel=IMAGE_PROMPT_PANEL,
                                           show_default=False, metavar="FILE[:WEIGHT]")]))

        @functools.wraps(command)
        def with_fields(**values: Any) -> None:
            given = {spec.name: values.pop(spec.name) for spec in specs}
            fields = {name: value for name, value in given.items() if value is not None}
            inpaint = {spec.name: values.pop(spec.name) for spec in inpaint_specs}
            mask, outpaint = values.pop("mask"), values.pop("outpaint")
            part = inpaint_part(mask, outpaint, {name: value for name, value in inpaint.items() if value is not None})
            fields |= {"inpaint": part} if part is not None else {}
            units = values.pop("control")
            fields |= {"control": tuple(parse_unit(text) for text in units)} if units else {}
            pictures = values.pop("image_prompt")
            fields |= {"image_prompts": tuple(parse_image_prompt(text) for text in pictures)} if pictures else {}
            command(**values, fields=fields)

        parameters = [*arguments, *added, *(param for param in own if param not in arguments)]
        with_fields.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_fields.__annotations__ = {param.name: param.annotation for param in parameters}
        return with_fields  # type: ignore[return-value]

    return decorate


def inpaint_part(mask: str | None, outpaint: str | None, fields: dict[str, Any]) -> Inpaint | None:
    """The ``Inpaint`` of --mask, --outpaint and the inpainting options; None without a mask or an outpaint."""
    if mask is None and outpaint is None:
        if fields:
            name = next(iter(fields))
            raise InvalidArgument(name, "given with --mask or --outpaint", fields[name])
        return None
    chosen: str | Path | None = None if mask is None else ALPHA if mask.strip().lower() == ALPHA else Path(mask)
    return Inpaint(mask=chosen, outpaint=parse_outpaint(outpaint) if outpaint else (0, 0, 0, 0), **fields)


def _option(spec: FieldSpec, panel: str = "Generation") -> Any:
    """The typer annotation of one field's option: None when not given, its default shown in the help."""
    text = spec.help
    if spec.kind in (int, float) and spec.low is not None:
        text += f" {_number(spec.low)}..{_number(spec.high)}."  # type: ignore[arg-type]
    if spec.choices:
        text += f" One of {', '.join(spec.choices)}."
    decls = [spec.option, *ALIASES.get(spec.name, ())]
    shown: str | bool = False if spec.default in (None, "") else str(spec.default)
    if spec.kind is bool:
        name = spec.option.removeprefix("--")
        decls, shown = [f"{spec.option}/--no-{name}"], name if spec.default else f"no-{name}"
    if spec.unset:
        shown = spec.unset
    if shown:
        text += rf" \[default: {shown}]"  # escaped: rich would read [default: ...] as markup
    option = typer.Option(*decls, help=text, show_default=False, rich_help_panel=panel)
    return Annotated[spec.kind | None, option]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _is_argument(param: inspect.Parameter) -> bool:
    metadata = getattr(param.annotation, "__metadata__", ())
    return any(isinstance(item, typer.models.ArgumentInfo) for item in metadata)
