"""Model registry commands and the sampler list."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from img2img.cli.app import app, models_app
from img2img.errors import Img2ImgError, InvalidArgument


@app.command()
def samplers() -> None:
    """List the sampler names --sampler accepts (the default is marked)."""
    from img2img.engine.samplers import DEFAULT_SAMPLER, sampler_names

    for name in sampler_names():
        typer.echo(f"{name}{'  (default)' if name == DEFAULT_SAMPLER else ''}")


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="A short name for the model.")],
    path: Annotated[Path, typer.Argument(help="A diffusers folder or a .safetensors checkpoint, LoRA, embedding, "
                                              "VAE, ControlNet or T2I-Adapter.")],
    config: Annotated[Path | None, typer.Option(help="A diffusers folder for a single file: configs for an unusual "
                                                "checkpoint, and what the file lacks (an SD 3 file's text encoders, "
                                                "all but a FLUX.1 file's transformer).")] = None,
    prediction: Annotated[str | None, typer.Option(help="epsilon or v_prediction, if detection is wrong.")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow a pickled checkpoint (it can run code).")] = False,
    t5: Annotated[bool, typer.Option("--t5/--no-t5", help="SD 3.x: load its T5 text encoder (--no-t5 leaves it "
                                     "out: about 9.5 GB less, prompts read by CLIP alone).")] = True,
    default: Annotated[bool, typer.Option("--default", help="Make it the default model.")] = False,
) -> None:
    """Register a model, a LoRA, an embedding, a VAE, a ControlNet or a T2I-Adapter under NAME after checking what
    it is."""
    from img2img.models.addons import detect
    from img2img.models.registry import ModelEntry, ModelRegistry

    addon = detect(path)
    if addon is not None:  # a LoRA or an embedding, recognised from its keys
        ModelRegistry().add_addon(name, path, addon.kind)
        made_for = f" for {addon.base}" if addon.kind not in ("vae", "depth", "captioner", "clip") else ""
        typer.echo(f"added {name}: {addon.label}{made_for} at {Path(path).resolve()}")
        return
    if prediction not in (None, "epsilon", "v_prediction"):
        raise InvalidArgument("prediction", "epsilon or v_prediction", prediction)
    registry = ModelRegistry()
    entry = ModelEntry(name, str(path), str(config) if config else None, allow_pickle, prediction, t5)  # type: ignore[arg-type]
    family = registry.add(entry)
    if default:
        registry.set_default(name)
    marker = " (default)" if registry.default_name() == name else ""
    added = registry.get(name)
    without = "" if added is None or added.t5 else " without T5"
    typer.echo(f"added {name}: {family.label}{without} at {Path(path).resolve()}{marker}")


@models_app.command("list")
def models_list() -> None:
    """List registered models, their families, the defaults each runs with, and paths."""
    from img2img.models import addons
    from img2img.models.detect import inspect_model
    from img2img.models.registry import ModelRegistry

    registry = ModelRegistry()
    entries = registry.entries()
    for kind in addons.KINDS:
        for name, path in registry.addons(kind).items():
            typer.echo(f"  {name}\t{kind}{_made_for(Path(path))}\t{path}")
    if not entries:
        typer.echo("no models registered: add one with 'img2img models add NAME PATH'")
        return
    for entry in entries:
        try:
            family = inspect_model(Path(entry.path), name=entry.name, allow_pickle=entry.allow_pickle,
                                   prediction=entry.prediction).family
            label = f"{family.label} ({family.defaults_text}{'' if entry.t5 else ', without T5'})"
        except Img2ImgError as exc:
            label = f"unusable: {exc}"
        marker = "*" if entry.name == registry.default_name() else " "
        typer.echo(f"{marker} {entry.name}\t{label}\t{entry.path}")


def _made_for(path: Path) -> str:
    """" (for SD 1.x)" after a LoRA's, a ControlNet's or an adapter's kind; nothing when it cannot be read."""
    from img2img.models.addons import detect

    try:
        info = detect(path)
    except Img2ImgError:
        return " (unreadable)"
    plain = ("vae", "embedding", "depth", "captioner", "clip")  # kinds made for no particular base
    return f" (for {info.base})" if info is not None and info.kind not in plain else ""


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
