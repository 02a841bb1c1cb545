"""The request's options on the command line, derived from the field table (``img2img.engine.request.FIELDS``).

``@request_options(...)`` gives a command one option per request field, spelled as the field's spec says, with
its help, range and default. The command receives the options the user gave as ``fields`` (a dict, left-out
options absent), so that the request's own defaults, or a file's parameters (``--params-from``), fill the rest.
A new field in the table is an option of run, sweep and batch with no change here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from img2img.engine.fields import FieldSpec
from img2img.engine.request import FIELDS

F = TypeVar("F", bound=Callable[..., None])
ALIASES = {"num_images": ("--count",)}  # older spellings that stay accepted


def request_options(*, leave_out: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Add an option for every request field but the positional PROMPT and those in ``leave_out``."""
    specs = [spec for spec in FIELDS if spec.name not in leave_out and spec.option.startswith("-")]

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [param.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, param in signature.parameters.items()
               if name != "fields"]  # typer passes every value by name, so any order of defaults will do
        arguments = [param for param in own if _is_argument(param)]
        added = [inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_option(spec))
                 for spec in specs]

        @functools.wraps(command)
        def with_fields(**values: Any) -> None:
            given = {spec.name: values.pop(spec.name) for spec in specs}
            command(**values, fields={name: value for name, value in given.items() if value is not None})

        parameters = [*arguments, *added, *(param for param in own if param not in arguments)]
        with_fields.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_fields.__annotations__ = {param.name: param.annotation for param in parameters}
        return with_fields  # type: ignore[return-value]

    return decorate


def _option(spec: FieldSpec) -> Any:
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
    option = typer.Option(*decls, help=text, show_default=False, rich_help_panel="Generation")
    return Annotated[spec.kind | None, option]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _is_argument(param: inspect.Parameter) -> bool:
    metadata = getattr(param.annotation, "__metadata__", ())
    return any(isinstance(item, typer.models.ArgumentInfo) for item in metadata)
