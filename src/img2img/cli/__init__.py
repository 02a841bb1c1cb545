"""The ``img2img`` command: a thin layer over ``img2img.Engine``, the image I/O and the model registry.

Every error a user can cause ends as one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

# Typer parses with its own vendored click; its usage errors are these classes, not the click package's.
from typer import Abort
from typer._click.exceptions import BadParameter, NoArgsIsHelpError, UsageError

# The command modules attach their commands to the app when imported.
from img2img.cli import (  # noqa: F401
    batch,
    blend,
    control,
    describe,
    files,
    generate,
    models,
    prompts,
    recipes,
    serve,
    styles,
)
from img2img.cli.app import app
from img2img.cli.common import flag_for
from img2img.errors import Img2ImgError, InvalidArgument

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: run the app and turn every user error into one line and exit status 2."""
    # The libraries below print progress bars and advice meant for developers; a CLI user needs neither.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    err = Console(stderr=True, soft_wrap=True, highlight=False, emoji=False)

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
        status = fail(f"{flag_for(exc.argument)} should be {exc.expected}, but got {exc.received!r}")
    except Img2ImgError as exc:
        status = fail(str(exc))
    except (KeyboardInterrupt, Abort):
        err.print("interrupted")
        status = 130
    sys.exit(status if isinstance(status, int) else 0)


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
