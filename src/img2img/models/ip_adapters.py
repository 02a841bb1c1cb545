"""IP-Adapters on disk: recognised from their keys, found by name, loaded for a model's UNet.

An IP-Adapter is two files' worth of weights: a CLIP image encoder (a transformers
``CLIPVisionModelWithProjection`` folder, ``image_encoder/``) and the adapter itself, a ``.safetensors`` file in
the original key layout: ``image_proj.*`` (the projection of the encoder's output to a few "image tokens") and
``ip_adapter.N.to_k_ip/to_v_ip.weight`` (a key and value projection for each cross-attention layer of the UNet).
Variants, told apart by the projection's keys: the plain one (4 tokens from the encoder's projected embedding),
"plus" (a perceiver resampler over the encoder's penultimate hidden states, 16 tokens) and "full" (an MLP over
every patch's hidden state).

Where they are: a weight file, a folder holding one (the image encoder beside it), or a copy of an IP-Adapter
repository (``models/`` for SD 1.5, ``sdxl_models/`` for SDXL, each with its ``image_encoder/``), by path, by a
name registered with ``img2img models add``, as a file in the IP-Adapter folder (``$IMG2IMG_IP_ADAPTER_DIR``, else
``ipadapter/`` in the user data folder) or as a repo id in the Hugging Face cache. Only ``.safetensors`` files are
read.

The base an adapter was made for is read from its shapes (the width of the key projections' input: 768 for SD 1.x,
1024 for SD 2.x, 2048 for SDXL), so an adapter of another base is refused in one line before anything loads.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from img2img.errors import InvalidArgument, ModelError

if TYPE_CHECKING:
    import torch
    from PIL import Image

KIND = "ip-adapter"
BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # by cross-attention width
FOLDERS = ("", "models", "sdxl_models")  # where a repository keeps its adapter files
EMBEDDINGS_KEPT = 16  # pictures whose image embeddings an adapter keeps


@dataclass(frozen=True)
class AdapterInfo:
    variant: str  # "plain", "plus" or "full"
    width: int  # the cross-attention width of the UNet it fits
    layers: int  # the cross-attention layers it adds to
    embed_dim: int  # what its projection reads: the encoder's projection (plain) or hidden width (plus, full)

    @property
    def base(self) -> str:
        return base_name(self.width)

    @property
    def reads_hidden_states(self) -> bool:
        """Whether it reads the encoder's penultimate hidden states (plus, full) rather than its embedding."""
        return self.variant != "plain"


def base_name(width: int) -> str:
    """The base model of a cross-attention ``width``, in words."""
    return BASES.get(width, f"a model {width} wide")


def detect_keys(shapes: dict[str, tuple[int, ...]]) -> AdapterInfo | None:
    """An adapter's variant, width and layers from its tensors' shapes; None when they are not an adapter's."""
    keys = [key for key in shapes if key.startswith("ip_adapter.") and key.endswith(".to_k_ip.weight")]
    if not keys:
        return None
    width = shapes[keys[0]][1]
    if "image_proj.proj.weight" in shapes:
        return AdapterInfo("plain", width, len(keys), shapes["image_proj.proj.weight"][1])
    if "image_proj.latents" in shapes and "image_proj.proj_in.weight" in shapes:
        return AdapterInfo("plus", width, len(keys), shapes["image_proj.proj_in.weight"][1])
    if "image_proj.proj.3.weight" in shapes:
        return AdapterInfo("full", width, len(keys), shapes["image_proj.proj.0.weight"][1])
    return None


def detect(path: Path) -> AdapterInfo | None:
    """What the ``.safetensors`` file at ``path`` is, from its header alone, when it is an IP-Adapter."""
    from safetensors import safe_open

    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 (a safetensors handle)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path.name} should be a readable .safetensors file ({exc})") from exc
    return detect_keys(shapes)


def adapter_files(folder: Path) -> list[Path]:
    """The IP-Adapter files in ``folder`` and in a repository's ``models/`` and ``sdxl_models/`` under it."""
    found = []
    for sub in FOLDERS:
        place = folder / sub if sub else folder
        if place.is_dir():
            found += [path for path in sorted(place.glob("*.safetensors")) if detect(path) is not None]
    return found


def choose(path: Path, width: int, model_name: str, argument: str = "ip_adapter") -> tuple[Path, AdapterInfo]:
    """The adapter file at ``path`` (a file, or the one in a folder that fits a UNet ``width`` wide), checked
    against the model. A folder with several that fit gives the plain one, or says which there are."""
    if path.is_dir():
        files = adapter_files(path)
        if not files:
            raise InvalidArgument(argument, "an IP-Adapter (.safetensors with image_proj and ip_adapter keys) or a "
                                  "folder holding one", f"{path} (no adapter file in it)")
        fitting = [file for file in files if _info(file).width == width]
        plain = [file for file in fitting if _info(file).variant == "plain" and "light" not in file.name]
        if len(fitting) > 1 and len(plain) != 1:
            names = ", ".join(str(file.relative_to(path)) for file in fitting)
            raise InvalidArgument(argument, f"one adapter file: {path} holds several for {base_name(width)} "
                                  f"({names}); give the file's path", str(path))
        path = (plain or fitting or files)[0]
    info = _info(path)
    if info is None:
        raise InvalidArgument(argument, "an IP-Adapter (.safetensors with image_proj and ip_adapter keys)",
                              f"{path.name} (another kind of file)")
    if info.width != width:
        raise InvalidArgument(argument, f"an IP-Adapter for {base_name(width)}, as {model_name} is",
                              f"{path.name} (an IP-Adapter for {info.base})")
    return path, info


def _info(path: Path) -> AdapterInfo:
    return detect(path)  # type: ignore[return-value]


def find_encoder(weights: Path, info: AdapterInfo) -> Path:
    """The image encoder folder for the adapter file ``weights``: an ``image_encoder/`` beside it or in its
    repository's ``models/`` or ``sdxl_models/``, the one whose output width the adapter reads."""
    places = [weights.parent / "image_encoder", weights.parent.parent / "image_encoder"]
    places += [weights.parent.parent / sub / "image_encoder" for sub in FOLDERS if sub]
    places += [weights.parent / sub / "image_encoder" for sub in FOLDERS if sub]
    seen = []
    for place in places:
        config = place / "config.json"
        if not config.is_file():
            continue
        seen.append(place)
        values = json.loads(config.read_text(encoding="utf-8"))
        values = values.get("vision_config", values)
        width = values.get("hidden_size") if info.reads_hidden_states else values.get("projection_dim")
        if width == info.embed_dim:
            return place
    found = f"{', '.join(str(p) for p in seen)} (of other widths)" if seen else "none"
    raise InvalidArgument("ip_adapter", f"an image encoder folder (image_encoder/ beside {weights.name}, or in the "
                          f"repository's models/ or sdxl_models/) giving {info.embed_dim} numbers", found)


def resolve(reference: str, registered: dict[str, str], paths: bool = True) -> tuple[str, Path]:
    """``reference`` as (name, path of a file or folder): a registered name (NAME:FILE for one file of a registered
    repository), a file in the IP-Adapter folders, a repo id in the Hugging Face cache or, when ``paths`` allows
    it, a path."""
    from img2img.models import addons
    from img2img.models.detect import REPO_ID, find_hf_cache_snapshot

    given = Path(reference).expanduser()
    if reference in registered:
        return reference, Path(registered[reference])
    base, colon, stem = reference.partition(":")  # NAME:FILE, one adapter of a registered repository
    if colon and base in registered and Path(registered[base]).is_dir():
        chosen = [file for file in adapter_files(Path(registered[base])) if file.stem == stem]
        if chosen:
            return reference, chosen[0]
    if paths and given.exists():
        return given.name.removesuffix(".safetensors"), given
    snapshot = find_hf_cache_snapshot(reference) if REPO_ID.match(reference) else None
    if snapshot is not None:
        return reference, snapshot
    try:
        return reference, addons.find(KIND, reference, registered, "ip_adapter")
    except InvalidArgument:
        where = ", ".join(str(folder) for folder in addons.folders(KIND))
        known = sorted({*registered, *(path.stem for path in addons.available(KIND))})
        ways = ", a repo id in the Hugging Face cache or a path" if paths else ""
        raise InvalidArgument("ip_adapter", f"an IP-Adapter: a name registered with 'img2img models add', a file in "
                              f"{where}{ways} ({', '.join(known) or 'none there'})", reference) from None


def catalog(registered: dict[str, str]) -> list[tuple[str, Path, AdapterInfo]]:
    """The IP-Adapters that can be named: registered ones (a repository counts once per adapter file in it, named
    NAME:FILE when it holds several) and the files in the IP-Adapter folders."""
    from img2img.models import addons

    found: list[tuple[str, Path, AdapterInfo]] = []
    for name, place in sorted(registered.items()):
        files = adapter_files(Path(place)) if Path(place).is_dir() else [Path(place)]
        found += [(name if len(files) == 1 else f"{name}:{file.stem}", file, _info(file)) for file in files
                  if _info(file) is not None]
    found += [(path.stem, path, _info(path)) for path in addons.available(KIND) if _info(path) is not None]
    return found


def weights_bytes(path: Path) -> int:
    """The bytes an adapter file and its image encoder hold (0 for a repository's folder, whose file is chosen at
    load), for the memory estimate."""
    from img2img.models.memory import weight_files_bytes

    info = detect(path) if path.is_file() else None
    return 0 if info is None else path.stat().st_size + weight_files_bytes(find_encoder(path, info))


@dataclass(eq=False)
class LoadedAdapter:
    """An IP-Adapter loaded for one UNet: its image encoder, its projection and each cross-attention layer's key
    and value projections (by the layer's processor name). It keeps the image embeddings of the last pictures."""

    info: AdapterInfo
    encoder: Any  # CLIPVisionModelWithProjection
    processor: Any  # CLIPImageProcessor
    projection: torch.nn.Module
    layers: dict[str, tuple[torch.nn.Module, torch.nn.Module]]
    dtype: torch.dtype
    _embeddings: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=OrderedDict)

    def embeddings(self, picture: Image.Image, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """What the projection reads of ``picture`` (known by ``key``, its pixels' hash), as (unconditional,
        conditional): computed once per picture, as diffusers' ``prepare_ip_adapter_image_embeds`` does (zeros for
        the plain variant's unconditional embedding, a black picture's hidden states for the others)."""
        import torch

        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        with torch.inference_mode():
            pixels = self.processor(picture.convert("RGB"), return_tensors="pt").pixel_values
            pixels = pixels.to(self.encoder.device, self.encoder.dtype)
            if self.info.reads_hidden_states:
                hidden = self.encoder(torch.cat([torch.zeros_like(pixels), pixels]), output_hidden_states=True)
                negative, positive = hidden.hidden_states[-2].chunk(2)
            else:
                positive = self.encoder(pixels).image_embeds
                negative = torch.zeros_like(positive)
        self._embeddings[key] = (negative.to(self.dtype), positive.to(self.dtype))
        while len(self._embeddings) > EMBEDDINGS_KEPT:
            self._embeddings.popitem(last=False)
        return self._embeddings[key]

    def tokens(self, negative: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tokens of an embedding pair, each (1, tokens, width)."""
        import torch

        with torch.inference_mode():
            both = self.projection(torch.cat([negative, positive]))
        return tuple(part.reshape(1, -1, both.shape[-1]) for part in both.chunk(2))  # type: ignore[return-value]


def cross_attention_names(unet_config: dict[str, Any]) -> list[str]:
    """The cross-attention processors' names of a UNet of ``unet_config``, in the order the original layout numbers
    them, read from a UNet built on the meta device (no weights, no memory)."""
    import diffusers
    import torch

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(dict(unet_config))
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def load(weights: Path, unet_config: dict[str, Any], device: str, dtype: torch.dtype) -> LoadedAdapter:
    """The adapter file ``weights`` (with its image encoder) for a UNet of ``unet_config``, on ``device`` in
    ``dtype``. The projection is converted by diffusers' own code; each cross-attention layer's key and value
    projections are the original file's ``ip_adapter.N`` (N = 1, 3, 5... in the UNet's order of its attention
    layers, as the original code numbered every attention layer)."""
    import diffusers
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    info = _info(weights)
    folder = find_encoder(weights, info)
    encoder = CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype, use_safetensors=True).to(device)
    side = int(encoder.config.image_size)
    processor = (CLIPImageProcessor.from_pretrained(folder) if (folder / "preprocessor_config.json").is_file() else
                 CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}))
    tensors = load_file(str(weights))
    parts: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in tensors.items():
        group, _, rest = key.partition(".")
        if group in parts:
            parts[group][rest] = value
    names = cross_attention_names(unet_config)
    if info.layers != len(names):
        raise ModelError(f"{weights.name} adds to {info.layers} cross-attention layers; this UNet has {len(names)}")
    convert = diffusers.UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers
    projection = convert(None, parts["image_proj"], low_cpu_mem_usage=False)  # uses no UNet state this way
    layers = {}
    for index, name in enumerate(names):
        pair = []
        for part in ("to_k_ip", "to_v_ip"):
            weight = parts["ip_adapter"][f"{2 * index + 1}.{part}.weight"]
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight.data = weight
            pair.append(linear.to(device, dtype).requires_grad_(False))
        layers[name] = (pair[0], pair[1])
    projection.to(device, dtype).requires_grad_(False)
    encoder.requires_grad_(False).eval()
    return LoadedAdapter(info, encoder, processor, projection.eval(), layers, dtype)
