"""Commands on result files: ``info`` (what made it), ``convert`` (another format, same metadata) and
``reproduce`` (make it again, byte for byte)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from img2img.cli import common as c
from img2img.cli.app import app
from img2img.errors import InvalidArgument, SourceImageError

if TYPE_CHECKING:
    from PIL import Image

    from img2img.engine.request import GenerationRequest
    from img2img.engine.result import GenerationRecord
    from img2img.imageio.metadata import Metadata

File = Annotated[Path, typer.Argument(help="A PNG, JPEG or WebP made by img2img or another generator.")]


@app.command()
def info(
    file: File,
    as_json: Annotated[bool, typer.Option("--json", help="Print the parameters as JSON (our full record for our "
                                                         "own files).")] = False,
) -> None:
    """Print the generation parameters stored in FILE: ours, or those of A1111, ComfyUI, InvokeAI, Fooocus or NovelAI.

    [bold]Examples[/bold]

      img2img info outputs/00001-42.png
      img2img info result.jpg --json
      img2img info ComfyUI_00012_.png
    """
    from img2img.imageio.foreign import describe, read_foreign
    from img2img.imageio.metadata import read_metadata

    if not file.is_file():
        raise SourceImageError(f"FILE should be an image file, but {file} does not exist")
    metadata = read_metadata(file)
    if metadata.record is not None:  # our own file: A1111's text, or our complete record
        if as_json:
            try:
                record = json.loads(metadata.record)
            except json.JSONDecodeError as exc:
                raise SourceImageError(f"FILE should hold a readable img2img record, but {file}'s is broken "
                                       f"({exc})") from exc
            typer.echo(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False))
        else:
            typer.echo(metadata.parameters if metadata.parameters is not None else metadata.record)
            _echo_retention(metadata.record)
        return
    found = read_foreign(file)
    typer.echo(json.dumps(found.to_dict(), indent=2, ensure_ascii=False) if as_json else describe(found))


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="The image to convert.")],
    target: Annotated[Path, typer.Argument(help="The new file: .png, .jpg/.jpeg or .webp.")],
    quality: c.Quality = 90,
    overwrite: c.Overwrite = False,
) -> None:
    """Write SOURCE in the format TARGET's suffix names, keeping its generation parameters.

    [bold]Examples[/bold]

      img2img convert outputs/00001-42.png share.jpg --quality 85
      img2img convert outputs/00001-42.png small.webp

    JPEG has no transparency: transparent areas become white.
    """
    from img2img.imageio.metadata import format_of, read_metadata
    from img2img.imageio.output import save_image
    from img2img.imageio.source import read_source

    if not 1 <= quality <= 100:
        raise InvalidArgument("quality", "a whole number in [1, 100]", quality)
    format_of(target)
    picture = read_source(source)
    metadata = read_metadata(source)
    image = picture.rgb if picture.alpha is None else _with_alpha(picture.rgb, picture.alpha)
    written = save_image(image, target, metadata, quality=quality, overwrite=overwrite)
    kept = "with its parameters" if metadata else "(it had no generation parameters)"
    typer.echo(f"{written} {kept}")


@app.command()
def reproduce(
    file: File,
    source: Annotated[Path, typer.Option("--source", help="The source image FILE was made from.")],
    style_image: c.StyleImage = None,
    mask: Annotated[Path | None, typer.Option("--mask", help="The mask FILE was inpainted with.")] = None,
    control_image: Annotated[list[Path] | None, typer.Option(
        "--control-image", help="The picture of each control unit that had its own, in order.")] = None,
    image_prompt: Annotated[list[Path] | None, typer.Option(
        "--image-prompt", help="The picture of each image prompt, in order.")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="An image file or a folder.")] = None,
    model: c.Model = None,
    quality: c.Quality = 90,
    device: c.Device = "auto",
    dtype: c.Dtype = "auto",
    backend: c.Backend = "auto",
    quantize: c.Quantize = "none",
    allow_pickle: c.AllowPickle = False,
    overwrite: c.Overwrite = False,
) -> None:
    """Run the request recorded in FILE again on SOURCE and write the result in FILE's format.

    [bold]Examples[/bold]

      img2img reproduce outputs/00001-42.png --source photo.jpg
      img2img reproduce painting.png --source photo.jpg --model ~/models/sd15.safetensors -o again.png

    The same source, model, settings and machine give an identical file. An inpainted FILE needs its --mask, a
    controlled one the pictures of its control units (--control-image, repeated), one with image prompts their
    pictures (--image-prompt, repeated).
    """
    from img2img.cli.generate import announce_model, prepare, save
    from img2img.engine.result import GenerationRecord
    from img2img.imageio.metadata import format_of

    metadata = _metadata(file)
    if metadata.record is None:
        raise SourceImageError(f"FILE should hold an img2img record, but {file} has none (only A1111 parameters)")
    record = GenerationRecord.from_json(metadata.record)
    if record.style_image_sha256 and style_image is None:
        raise InvalidArgument("style_image", f"the style picture {file.name} was made with", None)
    request = record.to_request(source, style_image, mask, control_image or (), image_prompt or ())
    if model is not None:
        request = replace(request, model=model)
    request = _same_adapter(record, _same_addons(record, request))
    format_name = format_of(file)
    engine, request, format_name = prepare(request, output, format_name, quality, device, dtype, allow_pickle, backend,
                                           quantize)
    picture = engine.read_source(request)
    if picture.sha256 != record.source_sha256:
        raise SourceImageError(f"--source should be the image {file.name} was made from (SHA-256 "
                               f"{record.source_sha256[:12]}…), but {source} has SHA-256 {picture.sha256[:12]}…")
    masking = engine.masking(request, picture)
    if masking is not None and masking.sha256 != record.mask_sha256:
        raise SourceImageError(f"--mask should be the mask {file.name} was inpainted with (SHA-256 "
                               f"{str(record.mask_sha256)[:12]}…), but {mask} has SHA-256 {str(masking.sha256)[:12]}…")
    targets = c.output_paths(output, 1, format_name)
    console = Console(emoji=False)
    announce_model(console, engine, request)
    if request.strength > 0 and not engine.is_builtin(request.model) and \
            engine.load(request.model).sha256 != record.model_hash:
        c.print_notes([f"the model's weights differ from those that made {file.name}; the result will too"])
    with c.step_progress(console) as update:
        result = engine.generate(request, lambda image, done, total: update(image, 1, done, total))
    path = save(result.images[0], targets(0, record.seed), result.record, quality, overwrite)
    same = path.read_bytes() == file.read_bytes()
    console.print(f"{path}  {'identical to' if same else 'differs from'} {file}", highlight=False)


def _same_addons(record: GenerationRecord, request: GenerationRequest) -> GenerationRequest:
    """The request with each recorded LoRA, embedding, VAE and control model found by its hash: under its own name,
    or renamed (the request then names the new file, which holds the same bytes)."""
    from img2img.models.addons import LABEL, find_by_hash, folders
    from img2img.models.embeddings import rename
    from img2img.models.registry import ModelRegistry

    registry = ModelRegistry()
    prompt, negative, vae, units = request.prompt, request.negative_prompt, request.vae, list(request.control)
    vaes = ({"name": record.vae, "sha256": record.vae_sha256},) if record.vae and record.vae_sha256 else ()
    controls = tuple({"name": entry["model"], "sha256": entry["model_sha256"], "kind": entry["kind"]}
                     for entry in record.controls)
    for kind, entries in (("lora", record.loras), ("embedding", record.embeddings), ("vae", vaes),
                          ("controlnet", controls)):
        registered = registry.addons(kind) | (registry.addons("t2i-adapter") if kind == "controlnet" else {})
        for number, entry in enumerate(entries):
            name, sha256 = entry["name"], entry["sha256"]
            found = find_by_hash(kind, name, sha256, registered)
            label = LABEL[entry.get("kind", kind)]
            if found is None:
                where = ", ".join(str(folder) for folder in folders(kind))
                raise InvalidArgument("FILE", f"made with a {label} that is here: {name} (SHA-256 {sha256[:12]}…), "
                                      f"registered or in {where}", "no file with those bytes")
            if found == name:
                continue
            c.print_notes([f"{label} {name} is found by its hash as {found}"])
            if kind == "vae":
                vae = found
            elif kind == "controlnet":
                units[number] = replace(units[number], model=found)
            elif kind == "lora":
                prompt = prompt.replace(f"<lora:{name}:", f"<lora:{found}:").replace(f"<lora:{name}>",
                                                                                      f"<lora:{found}>")
            else:
                prompt, negative = rename(prompt, name, found), rename(negative, name, found)
    return replace(request, prompt=prompt, negative_prompt=negative, vae=vae, control=tuple(units))


def _same_adapter(record: GenerationRecord, request: GenerationRequest) -> GenerationRequest:
    """The request with its IP-Adapter found by the recorded hash: under the name it ran with, or renamed (a
    registered adapter, or a file in the IP-Adapter folder, with the same bytes)."""
    from img2img.models import ip_adapters
    from img2img.models.addons import folders
    from img2img.models.loading import weights_sha256
    from img2img.models.registry import ModelRegistry

    entry = record.image_prompt
    sha256 = str(entry.get("adapter_sha256", "")) if entry else ""
    if not sha256 or not request.ip_adapter:  # none, or the built-in engine's style pictures
        return request
    registered = ModelRegistry().addons(ip_adapters.KIND)
    try:
        found = ip_adapters.resolve(request.ip_adapter, registered)[1]
        if any(weights_sha256(file) == sha256 for file in (ip_adapters.adapter_files(found) if found.is_dir()
                                                           else [found])):
            return request
    except InvalidArgument:
        pass  # the name is gone: look for the bytes under another
    for name, path, _info in ip_adapters.catalog(registered):
        if weights_sha256(path) == sha256:
            c.print_notes([f"IP-Adapter {request.ip_adapter} is found by its hash as {name}"])
            return replace(request, ip_adapter=name)
    where = ", ".join(str(folder) for folder in folders(ip_adapters.KIND))
    raise InvalidArgument("FILE", f"made with an IP-Adapter that is here: {request.ip_adapter} (SHA-256 "
                          f"{sha256[:12]}…), registered or in {where}", "no file with those bytes")


def _echo_retention(record_text: str) -> None:
    """The retention scores under the parameters, when the record has them (records from before them have not)."""
    from img2img.imageio.retention import describe

    try:
        scores = json.loads(record_text).get("retention")
        line = describe(scores) if isinstance(scores, dict) else ""
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        line = ""
    if line:
        typer.echo(line[0].upper() + line[1:])


def _metadata(file: Path) -> Metadata:
    from img2img.imageio.metadata import read_metadata

    if not file.is_file():
        raise SourceImageError(f"FILE should be an image file, but {file} does not exist")
    metadata = read_metadata(file)
    if not metadata:
        raise SourceImageError(f"FILE should hold generation parameters, but {file} has none")
    return metadata


def _with_alpha(rgb: Image.Image, alpha: Image.Image) -> Image.Image:
    image = rgb.convert("RGBA")
    image.putalpha(alpha)
    return image
