"""Add-ons: LoRAs, textual-inversion embeddings and VAEs, recognised from their keys, found by name, named by hash.

A name is looked up in the registry (``img2img models add NAME FILE`` detects the kind) and then, as A1111 does,
as a file name (without ``.safetensors``) in the add-on folders: ``$IMG2IMG_LORA_DIR``,
``$IMG2IMG_EMBEDDINGS_DIR`` and ``$IMG2IMG_VAE_DIR`` (each a list separated by ``os.pathsep``), else ``loras/``,
``embeddings/`` and ``vae/`` in the user data folder. Only ``.safetensors`` files (and diffusers VAE folders) are
read: pickles can run code.

The base a LoRA was trained for is read from its shapes: the width of the UNet's cross-attention (768 for SD 1.x,
1024 for SD 2.x, 2048 for SDXL), or of the text encoder for a text-only LoRA. A LoRA of another base is refused
before anything loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from img2img.errors import InvalidArgument, ModelError

KINDS = ("lora", "embedding", "vae", "controlnet", "t2i-adapter", "depth", "ip-adapter", "captioner", "clip")
FOLDER_ENV = {"lora": "IMG2IMG_LORA_DIR", "embedding": "IMG2IMG_EMBEDDINGS_DIR", "vae": "IMG2IMG_VAE_DIR",
              "controlnet": "IMG2IMG_CONTROLNET_DIR", "t2i-adapter": "IMG2IMG_CONTROLNET_DIR",
              "depth": "IMG2IMG_ANNOTATOR_DIR", "ip-adapter": "IMG2IMG_IP_ADAPTER_DIR",
              "captioner": "IMG2IMG_ANNOTATOR_DIR", "clip": "IMG2IMG_ANNOTATOR_DIR"}
FOLDER_NAME = {"lora": "loras", "embedding": "embeddings", "vae": "vae", "controlnet": "controlnet",
               "t2i-adapter": "controlnet", "depth": "annotators", "ip-adapter": "ipadapter", "captioner": "annotators",
               "clip": "annotators"}
LABEL = {"lora": "LoRA", "embedding": "embedding", "vae": "VAE", "controlnet": "ControlNet",
         "t2i-adapter": "T2I-Adapter", "depth": "depth model", "ip-adapter": "IP-Adapter", "captioner": "captioner",
         "clip": "CLIP model"}
FOLDER_KINDS = ("vae", "controlnet", "t2i-adapter")  # kinds that may be a diffusers folder rather than a file
BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # by cross-attention width
_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "lora_A.default.weight")
_LYCORIS = ("hada_w1_a", "lokr_w1", "lokr_w1_a", "oft_diag", "ia3")


@dataclass(frozen=True)
class AddonInfo:
    kind: str  # "lora", "embedding" or "vae"
    width: int | None  # a LoRA's UNet cross-attention width, or the text width it works on
    xl: bool  # made for SDXL's two text encoders
    vectors: int = 0  # an embedding's vectors (tokens) per encoder

    @property
    def label(self) -> str:
        return LABEL[self.kind]

    @property
    def base(self) -> str:
        if self.xl:
            return "SDXL"
        return BASES.get(self.width or 0, f"a model {self.width} wide")


def detect(path: Path) -> AddonInfo | None:
    """What a ``.safetensors`` file (or a folder) is, from its header alone: a LoRA, an embedding, a VAE, a
    ControlNet or a T2I-Adapter, or None (a checkpoint)."""
    from safetensors import safe_open

    from img2img.models import control_models, ip_adapters
    from img2img.models.captioners import kind_of
    from img2img.models.estimators import is_depth_folder

    if path.is_dir():
        control = control_models.detect(path)
        if control is not None:
            return AddonInfo(control.kind, control.width, control.xl)
        adapters = ip_adapters.adapter_files(path)
        if adapters:
            widths = {ip_adapters.detect(file).width for file in adapters}  # type: ignore[union-attr]
            return AddonInfo("ip-adapter", min(widths), widths == {2048})
        if is_depth_folder(path):
            return AddonInfo("depth", None, False)
        describer = kind_of(path)
        if describer is not None:
            return AddonInfo(describer, None, False)
        config = path / "config.json"
        text = config.read_text(encoding="utf-8", errors="replace") if config.is_file() else ""
        is_vae = '"AutoencoderKL"' in text or '"AutoencoderTiny"' in text or tiny_pair(path) is not None
        return AddonInfo("vae", None, False) if is_vae else None
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in keys}
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path.name} should be a readable .safetensors file ({exc})") from exc
    control = control_models.detect(path, shapes)
    if control is not None:
        return AddonInfo(control.kind, control.width, control.xl)
    adapter = ip_adapters.detect_keys(shapes)
    if adapter is not None:
        return AddonInfo("ip-adapter", adapter.width, adapter.width == 2048)
    if any(marker in key for key in keys for marker in _LYCORIS):
        raise ModelError(f"{path.name} is a LyCORIS LoHa/LoKr/OFT/IA3 file, which diffusers cannot apply; "
                         "LoRA and LoCon files work")
    downs = [key for key in keys if key.endswith(_DOWN)]
    if downs:
        xl = any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.", "te2.")) or "input_blocks" in k
                 for k in keys)
        cross = [shapes[k][1] for k in downs if "attn2" in k and ("to_k" in k or "to.k" in k)]
        text = [shapes[k][1] for k in downs if k.startswith(("lora_te", "text_encoder", "te_", "te1"))]
        return AddonInfo("lora", (cross or text or [None])[0], xl)
    if {"encoder.conv_in.weight", "decoder.conv_in.weight"} <= set(keys):  # a VAE alone, either key layout
        return AddonInfo("vae", shapes["decoder.conv_in.weight"][1], False)
    if {"encoder.layers.0.weight", "decoder.layers.0.weight"} <= set(keys):  # a tiny autoencoder (TAESD) in one file
        return AddonInfo("vae", shapes["decoder.layers.0.weight"][1], False)
    if "emb_params" in keys or "string_to_param" in keys:
        key = "emb_params" if "emb_params" in keys else "string_to_param"
        return AddonInfo("embedding", shapes[key][-1], False, shapes[key][0] if len(shapes[key]) > 1 else 1)
    if {"clip_l", "clip_g"} <= set(keys):
        return AddonInfo("embedding", shapes["clip_l"][-1], True, shapes["clip_l"][0])
    shape = shapes[keys[0]] if len(keys) == 1 else ()
    if len(shape) in (1, 2) and (len(shape) == 1 or shape[0] <= 75):  # diffusers' format: {token: vectors}
        return AddonInfo("embedding", shape[-1], False, shape[0] if len(shape) == 2 else 1)
    return None


def tiny_pair(folder: Path) -> tuple[Path, Path] | None:
    """A tiny autoencoder as its author ships it and ComfyUI keeps it: ``taesd_encoder.safetensors`` and
    ``taesd_decoder.safetensors`` (or ``taesdxl_...``) side by side in ``folder``; None when it holds no such pair."""
    for encoder in sorted(folder.glob("*_encoder.safetensors")) if folder.is_dir() else ():
        decoder = encoder.with_name(encoder.name.replace("_encoder.", "_decoder."))
        if decoder.is_file():
            return encoder, decoder
    return None


def folders(kind: str) -> list[Path]:
    configured = os.environ.get(FOLDER_ENV[kind])
    if configured:
        return [Path(part).expanduser() for part in configured.split(os.pathsep) if part]
    return [Path(platformdirs.user_data_dir("img2img")) / FOLDER_NAME[kind]]


def find(kind: str, name: str, registered: dict[str, str], argument: str = "prompt") -> Path:
    """The file of the add-on ``name``: registered under that name, or ``name.safetensors`` in a folder (or, for
    a VAE, a diffusers folder ``name``)."""
    if name in registered:
        return Path(registered[name])
    for folder in folders(kind):
        for candidate in (folder / f"{name}.safetensors", folder / name):
            exists = candidate.is_file() or (kind in FOLDER_KINDS and (candidate / "config.json").is_file()) or (
                kind == "vae" and tiny_pair(candidate) is not None)
            if exists and candidate.resolve().parent == folder.resolve():  # no path tricks in a name
                return candidate
    where = ", ".join(str(folder) for folder in folders(kind))
    known = sorted({*registered, *(path.stem for path in available(kind) if is_kind(path, kind))})
    raise InvalidArgument(argument, f"a {LABEL[kind]} registered with 'img2img models add' or a .safetensors file in "
                          f"{where} ({', '.join(known) or 'none there'})", name)


def is_kind(path: Path, kind: str) -> bool:
    """Whether the file at ``path`` is an add-on of ``kind`` (an unreadable one is not)."""
    try:
        return getattr(detect(path), "kind", None) == kind
    except ModelError:
        return False


def available(kind: str) -> list[Path]:
    """The add-on files in the folders of ``kind`` (and VAE, ControlNet and adapter folders)."""
    found = [path for folder in folders(kind) if folder.is_dir() for path in folder.glob("*.safetensors")]
    if kind in FOLDER_KINDS:
        found += [path for folder in folders(kind) if folder.is_dir() for path in folder.iterdir()
                  if (path / "config.json").is_file()]
    return sorted(found)


def find_by_hash(kind: str, name: str, sha256: str, registered: dict[str, str]) -> str | None:
    """The name under which the add-on file with ``sha256`` is found now: ``name`` when its file is still that
    one, else any registered or folder add-on with those bytes; None when there is none."""
    from img2img.models.loading import weights_sha256

    own = registered.get(name) or (name if Path(name).exists() else None)  # a path given in the library or CLI
    candidates = {name: own} | dict(registered) | {path.stem: str(path) for path in available(kind)}
    for candidate, path in candidates.items():
        if path is None:
            try:
                path = str(find(kind, candidate, registered))
            except InvalidArgument:
                continue
        if Path(path).exists() and weights_sha256(Path(path)) == sha256:
            return candidate
    return None
