"""ControlNets and T2I-Adapters on disk: recognised from their files, found by name, loaded for a model.

Kinds and layouts:
- a diffusers ControlNet folder (``config.json`` of a ``ControlNetModel``), SD 1.x, 2.x or SDXL;
- a single ``.safetensors`` ControlNet in the original layout (``input_hint_block``, ``zero_convs``,
  ``middle_block_out``; the ControlNet 1.1 files, with or without the ``control_model.`` prefix) or in diffusers'
  key layout. A single file has no config: a ControlNet is a copy of its base UNet's encoder, so its config is the
  running model's UNet config, with the hint encoder's widths read from the file's shapes;
- a diffusers ``T2IAdapter`` folder (full, light or the SDXL kind).

The base a file was made for is read from its shapes (the cross-attention width, as for LoRAs), so a ControlNet of
another base is refused in one line before it loads.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from img2img.errors import InvalidArgument, ModelError

if TYPE_CHECKING:
    from img2img.models.device import Placement

KINDS = ("controlnet", "t2i-adapter")
LABELS = {"controlnet": "ControlNet", "t2i-adapter": "T2I-Adapter"}
ORIGINAL_PREFIX = "control_model."
BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # by cross-attention width


@dataclass(frozen=True)
class ControlInfo:
    kind: str  # "controlnet" or "t2i-adapter"
    width: int  # the cross-attention width of the UNet it steers (768, 1024, 2048)
    xl: bool
    layout: str = "diffusers"  # "diffusers" (a folder or a file of diffusers keys) or "original"
    in_channels: int = 3  # a map's channels (1: an adapter that reads a grey map)

    @property
    def label(self) -> str:
        return LABELS[self.kind]

    @property
    def base(self) -> str:
        return "SDXL" if self.xl else BASES.get(self.width, f"a model {self.width} wide")


def detect(path: Path, keys: dict[str, tuple[int, ...]] | None = None) -> ControlInfo | None:
    """What ``path`` is, when it is a ControlNet or a T2I-Adapter (a folder, or a file with ``keys``: its
    tensors' shapes); None otherwise."""
    if path.is_dir():
        return _detect_folder(path)
    if keys is None:
        return None
    shapes = {key.removeprefix(ORIGINAL_PREFIX): shape for key, shape in keys.items()}
    cross = [shape[1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")]
    if "input_hint_block.0.weight" in shapes and "zero_convs.0.0.weight" in shapes:
        return ControlInfo("controlnet", cross[0] if cross else 0, "label_emb.0.0.weight" in shapes, "original",
                           shapes["input_hint_block.0.weight"][1])
    if "controlnet_cond_embedding.conv_in.weight" in shapes and "controlnet_mid_block.weight" in shapes:
        return ControlInfo("controlnet", cross[0] if cross else 0, "add_embedding.linear_1.weight" in shapes,
                           "diffusers", shapes["controlnet_cond_embedding.conv_in.weight"][1])
    return None


def _detect_folder(path: Path) -> ControlInfo | None:
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name == "ControlNetModel":
        return ControlInfo("controlnet", int(config.get("cross_attention_dim") or 768),
                           config.get("addition_embed_type") == "text_time",
                           in_channels=int(config.get("conditioning_channels", 3)))
    if name == "T2IAdapter":
        xl = config.get("adapter_type") == "full_adapter_xl"
        return ControlInfo("t2i-adapter", 2048 if xl else 768, xl, in_channels=int(config.get("in_channels", 3)))
    return None


def check_base(info: ControlInfo, name: str, cross_attention: int, xl: bool, model: str) -> None:
    """Refuse a ControlNet or adapter made for another base than the model's (InvalidArgument naming both)."""
    fits = info.xl == xl and (xl or info.kind == "t2i-adapter" or info.width == cross_attention)
    if not fits:
        base = "SDXL" if xl else BASES.get(cross_attention, f"a model {cross_attention} wide")
        raise InvalidArgument("control.model", f"a {info.label} for {base} (the model {model})",
                              f"{name} (made for {info.base})")


def load(path: Path, info: ControlInfo, placement: Placement, unet_config: dict[str, Any]) -> Any:
    """The ControlNet or adapter at ``path`` for ``placement``, offline; a single file's config comes from
    ``unet_config`` (the model it steers). With OpenVINO, a ControlNet runs as IR (``img2img.models.ov_control``),
    converted once."""
    if placement.backend == "openvino" and info.kind == "controlnet":
        import torch

        from img2img.models import ov_control, ov_runtime
        from img2img.models.loading import weights_sha256

        digest = hashlib.sha256(json.dumps(unet_config, sort_keys=True, default=str).encode()).hexdigest()[:12]
        variant = ov_runtime.ir_variant(placement.dtype)
        folder = ov_control.controlnet_folder(weights_sha256(path), digest, variant)
        hint = single_file_config(path, unet_config) if path.is_file() else json.loads(
            (path / "config.json").read_text(encoding="utf-8"))
        factor = 2 ** (len(hint.get("conditioning_embedding_out_channels", (16, 32, 96, 256))) - 1)
        return ov_control.load_controlnet(folder, variant, lambda: _load(path, info, torch.float32, "cpu", unet_config),
                                          lambda: _load(path, info, placement.dtype, "cpu", unet_config), factor)
    return _load(path, info, placement.dtype, placement.device, unet_config)


def _load(path: Path, info: ControlInfo, dtype: Any, device: str, unet_config: dict[str, Any]) -> Any:
    import diffusers

    try:
        if info.kind == "t2i-adapter":
            part = diffusers.T2IAdapter.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        elif path.is_dir():
            part = diffusers.ControlNetModel.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        else:
            with tempfile.TemporaryDirectory(prefix="img2img-controlnet-") as folder:
                config = single_file_config(path, unet_config)
                (Path(folder) / "config.json").write_text(json.dumps(config), encoding="utf-8")
                part = diffusers.ControlNetModel.from_single_file(str(path), config=folder, torch_dtype=dtype,
                                                                  local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelError(f"{info.label} {path} could not be loaded: {(str(exc).splitlines() or [''])[0]}") from exc
    part.requires_grad_(False)
    return part.to(device).eval()


def single_file_config(path: Path, unet_config: dict[str, Any]) -> dict[str, Any]:
    """A ControlNetModel config for the single file at ``path``: the base UNet's, with the map's channels and the
    hint encoder's widths read from the file."""
    import diffusers

    shapes = {key.removeprefix(ORIGINAL_PREFIX): shape for key, shape in _shapes(path).items()}
    if "input_hint_block.0.weight" in shapes:  # convolutions at 0, 2, ... 12; 14 is the zero convolution out
        outs = [shapes[f"input_hint_block.{i}.weight"][0] for i in range(0, 14, 2) if f"input_hint_block.{i}.weight"
                in shapes]
        channels, first_input = shapes["input_hint_block.0.weight"][1], shapes["input_blocks.0.0.weight"][1]
    else:
        outs = [shapes["controlnet_cond_embedding.conv_in.weight"][0]] + [
            shapes[key][0] for key in sorted(shapes, key=_block_order)
            if key.startswith("controlnet_cond_embedding.blocks.") and key.endswith(".weight")]
        channels, first_input = shapes["controlnet_cond_embedding.conv_in.weight"][1], shapes["conv_in.weight"][1]
    widths = [width for k, width in enumerate(outs) if k == 0 or width != outs[k - 1]]
    accepted = set(inspect.signature(diffusers.ControlNetModel.__init__).parameters)
    config = {key: value for key, value in unet_config.items() if key in accepted}
    return config | {"_class_name": "ControlNetModel", "in_channels": first_input, "conditioning_channels": channels,
                     "conditioning_embedding_out_channels": widths}


def _block_order(key: str) -> int:
    parts = key.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else -1


def resolve(reference: str | Path, registered: dict[str, str], paths: bool = True) -> tuple[str, Path, ControlInfo]:
    """A unit's ``model`` as (name, path, what it is): a registered name, a file or folder in the ControlNet
    folders (``img2img.models.addons``), a repo id in the Hugging Face cache or, when ``paths`` allows it, a path.
    Anything that is not a ControlNet or an adapter is refused, saying what it is."""
    from img2img.models.detect import REPO_ID, find_hf_cache_snapshot

    text = str(reference)
    given = Path(text).expanduser()
    is_path = paths and text not in registered and given.exists()
    snapshot = None
    if not is_path and text not in registered and REPO_ID.match(text):
        snapshot = find_hf_cache_snapshot(text)
    path = given if is_path else snapshot or _find(text, registered, paths)
    info = _detect_any(path)
    if not isinstance(info, ControlInfo):
        raise InvalidArgument("control.model", "a ControlNet or a T2I-Adapter (a diffusers folder or a .safetensors "
                              "file)", f"{text} ({info})")
    return (path.name.removesuffix(".safetensors") if is_path else text), path, info


def _find(name: str, registered: dict[str, str], paths: bool) -> Path:
    """The registered ControlNet or adapter ``name``, or the file or folder of that name in the ControlNet
    folders."""
    from img2img.models import addons

    try:
        return addons.find("controlnet", name, registered)
    except InvalidArgument:
        where = ", ".join(str(folder) for folder in addons.folders("controlnet"))
        known = sorted({*registered, *(path.name.removesuffix(".safetensors") for path in available())})
        ways = ", a repo id in the Hugging Face cache or a path" if paths else ""
        raise InvalidArgument("control.model", f"a ControlNet or T2I-Adapter: a name registered with 'img2img models "
                              f"add', a file or folder in {where}{ways} ({', '.join(known) or 'none there'})",
                              name) from None


def available() -> list[Path]:
    """The ControlNet and adapter files and folders in the ControlNet folders."""
    from img2img.models import addons

    return [path for path in addons.available("controlnet") if path.is_dir() or path.suffix == ".safetensors"]


def _detect_any(path: Path) -> ControlInfo | str:
    """A ControlNet or an adapter as ControlInfo; anything else as a few words saying what it is."""
    from img2img.models import addons

    if path.is_dir():
        found = detect(path)
        if found is not None:
            return found
        if (path / "model_index.json").is_file():
            return "a diffusers pipeline folder"
        return "a folder without a ControlNet's config.json"
    if path.suffix != ".safetensors":
        return f"a {path.suffix or 'extensionless'} file, not .safetensors"
    try:
        other = addons.detect(path)
    except ModelError as exc:
        return str(exc)
    if other is not None and other.kind in KINDS:
        return detect(path, _shapes(path)) or "unrecognised"
    return f"a {other.label} file" if other is not None else "a checkpoint or other weights, not a ControlNet"


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of a .safetensors file's tensors, from its header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


def catalog(registered: dict[str, str]) -> list[tuple[str, Path, ControlInfo]]:
    """Every ControlNet and adapter that a unit can name: the registered ones, then those in the ControlNet
    folders (what cannot be read is left out)."""
    found = {name: Path(path) for name, path in sorted(registered.items())}
    for path in available():
        found.setdefault(path.name.removesuffix(".safetensors"), path)
    listed = []
    for name, path in found.items():
        info = _detect_any(path) if path.exists() else None
        if isinstance(info, ControlInfo):
            listed.append((name, path, info))
    return listed


def residual_shapes(config: dict[str, Any], batch: int, height: int, width: int) -> list[tuple[int, ...]]:
    """The shapes of a ControlNet's residuals for latents of ``height`` x ``width`` (its config is its UNet's
    encoder's): conv_in's output, each resnet's and each downsampler's, then the mid block's. A side halves,
    rounding up, at each downsampler."""
    channels, layers = list(config["block_out_channels"]), int(config["layers_per_block"])
    widths, levels = [channels[0]], [0]
    for index, channel in enumerate(channels):
        last = index == len(channels) - 1
        widths += [channel] * (layers + (0 if last else 1))
        levels += [index] * layers + ([] if last else [index + 1])
    widths.append(channels[-1])
    levels.append(len(channels) - 1)
    return [(batch, channel, -(-height // 2**level), -(-width // 2**level))
            for channel, level in zip(widths, levels, strict=True)]
