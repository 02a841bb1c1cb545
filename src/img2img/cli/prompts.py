"""``img2img prompt-check``: how a prompt is read, chunk by chunk, with each token's weight."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from img2img.cli.app import app
from img2img.engine.request import SPEC

if TYPE_CHECKING:
    from img2img.engine.prompt_syntax import Chunk

CHECK_HELP = """Show how PROMPT is read: its chunks of 75 tokens, each run of tokens with its weight, and the tokens \
that a plain prompt loses past 75.

[bold]Examples[/bold]

  img2img prompt-check "(masterpiece:1.2), a red fox, [blurry], BREAK snowy forest"
  img2img prompt-check "a very long prompt ..." --prompt-syntax plain
  img2img prompt-check "portrait, (freckles:1.3)" --json
"""


@app.command("prompt-check", help=CHECK_HELP)
def prompt_check(
    prompt: Annotated[str, typer.Argument(help="The prompt, as you would pass it to run.")],
    syntax: Annotated[str, typer.Option("--prompt-syntax", help=SPEC["prompt_syntax"].help)] = SPEC[
        "prompt_syntax"].default,
    as_json: Annotated[bool, typer.Option("--json", help="Print the chunks as JSON.")] = False,
) -> None:
    from transformers import CLIPTokenizer

    from img2img.engine.prompt_syntax import chunks, parse, plain
    from img2img.engine.request import check_scalar
    from img2img.models.families import Family
    from img2img.models.loading import prepared_config_dir

    check_scalar(SPEC["prompt_syntax"], syntax, 1)
    check_scalar(SPEC["prompt"], prompt, 1)
    # Every Stable Diffusion text encoder reads CLIP's vocabulary; SD 1.x's tokenizer stands for all of them.
    tokenizer = CLIPTokenizer.from_pretrained(prepared_config_dir(Family("sd1")) / "tokenizer")
    warnings: tuple[str, ...] = ()
    dropped: list[int] = []
    if syntax == "a1111":
        parsed = parse(prompt)
        read, warnings = chunks(tokenizer, parsed), parsed.warnings
    else:
        chunk, dropped = plain(tokenizer, prompt)
        read = [chunk]
    described = [_describe(tokenizer, chunk) for chunk in read]
    lost = tokenizer.decode(dropped) if dropped else ""
    if as_json:
        typer.echo(json.dumps({"syntax": syntax, "chunks": described, "dropped": lost, "warnings": list(warnings)},
                              indent=2, ensure_ascii=False))
        return
    total = sum(chunk.tokens for chunk in read)
    typer.echo(f"{len(read)} chunk{'s' * (len(read) != 1)}, {total} tokens ({syntax} syntax)")
    for number, entry in enumerate(described, start=1):
        typer.echo(f"chunk {number}: {entry['tokens']} of 75 tokens")
        for run in entry["runs"]:
            typer.echo(f"  {run['weight']:>5.3g}  {run['text']}")
    if lost:
        typer.echo(f"dropped past 75 tokens: {lost}")
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)


def _describe(tokenizer: Any, chunk: Chunk) -> dict[str, Any]:
    """A chunk's runs of tokens of equal weight, as text."""
    runs: list[dict[str, Any]] = []
    body = zip(chunk.ids[1:1 + chunk.tokens], chunk.weights[1:1 + chunk.tokens], strict=True)
    for token, weight in body:
        if runs and runs[-1]["weight"] == weight:
            runs[-1]["ids"].append(token)
        else:
            runs.append({"weight": weight, "ids": [token]})
    return {"tokens": chunk.tokens, "runs": [{"weight": round(run["weight"], 4), "text": tokenizer.decode(run["ids"])}
                                             for run in runs]}
