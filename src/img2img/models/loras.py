"""LoRAs on a loaded pipeline, through diffusers and PEFT: the kohya / A1111 key layout and diffusers' own, for the
UNet and the text encoders.

Each LoRA file is loaded into the pipeline once, as an adapter named by its hash, and stays there, inactive, for
later requests. Before each image exactly that image's LoRAs are made active at their weights; an image without
LoRAs runs with every adapter disabled, which is the base model bit for bit. So a cached pipeline is never changed
for a request that did not ask for a LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from img2img.engine.prompt_syntax import LoraTag
from img2img.errors import InvalidArgument, ModelError
from img2img.models import addons

MAX_LOADED = 16  # adapters kept loaded per pipeline; the least recently used beyond this are deleted


@dataclass(frozen=True)
class LoraUse:
    name: str
    weight: float
    path: Path
    sha256: str

    @property
    def adapter(self) -> str:
        return f"lora_{self.sha256[:16]}"

    def describe(self) -> dict[str, Any]:
        """Its entry in a record."""
        return {"name": self.name, "weight": self.weight, "sha256": self.sha256}


def resolve(tags: tuple[LoraTag, ...], registered: dict[str, str], cross_attention: int, xl: bool
            ) -> tuple[LoraUse, ...]:
    """The files of ``tags``, checked to be LoRAs for a model of this cross-attention width (and SDXL or not)."""
    from img2img.models.loading import weights_sha256

    uses = []
    for tag in tags:
        path = addons.find("lora", tag.name, registered)
        info = addons.detect(path)
        if info is None or info.kind != "lora":
            raise InvalidArgument("prompt", "LoRA names that are LoRA files", f"{tag.name} ({path.name} is "
                                  f"{'an embedding' if info else 'not a LoRA'})")
        model = "SDXL" if xl else addons.BASES.get(cross_attention, f"a model {cross_attention} wide")
        if info.xl != xl or (not xl and info.width not in (None, cross_attention)):
            raise InvalidArgument("prompt", f"LoRAs for {model}, the model in use", f"{tag.name} (for {info.base})")
        uses.append(LoraUse(tag.name, tag.weight, path, weights_sha256(path)))
    return tuple(uses)


def activate(pipeline: Any, uses: tuple[LoraUse, ...]) -> None:
    """Make exactly ``uses`` active on ``pipeline`` at their weights; none: every adapter off.

    With the OpenVINO UNet, the text encoders take the LoRAs as adapters and the UNet as weight deltas
    (``img2img.models.ov_lora``).
    """
    from img2img.models.ov_unet import OpenVinoUNet

    openvino = isinstance(getattr(pipeline, "unet", None), OpenVinoUNet)
    loaded = _loaded(pipeline)
    if openvino:
        _patch_unet(pipeline, uses)
    if not uses:
        if loaded:
            pipeline.disable_lora()
        return
    for use in uses:
        if use.adapter not in loaded:
            try:
                _load(pipeline, use, openvino)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise ModelError(f"LoRA {use.name} ({use.path.name}) could not be applied to this model: "
                                 f"{str(exc).splitlines()[0]}") from exc
            loaded = _loaded(pipeline)
    active = [use for use in uses if use.adapter in loaded]  # a UNet-only LoRA has no adapter under OpenVINO
    if active:
        pipeline.enable_lora()
        pipeline.set_adapters([use.adapter for use in active], [use.weight for use in active])
    elif loaded:
        pipeline.disable_lora()
    _forget_old(pipeline, loaded, {use.adapter for use in uses})


def deactivate(pipeline: Any) -> None:
    """Every adapter off after a run. The OpenVINO UNet keeps its patched weights until a run asks for another
    combination (``activate`` at the start of every run), so that repeating a LoRA does not compile twice."""
    if _loaded(pipeline):
        pipeline.disable_lora()


def _load(pipeline: Any, use: LoraUse, openvino: bool) -> None:
    if not openvino:
        pipeline.load_lora_weights(str(use.path), adapter_name=use.adapter)
        return
    state_dict, alphas = pipeline.lora_state_dict(str(use.path))
    for prefix in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipeline, prefix, None)
        if encoder is not None and any(key.startswith(f"{prefix}.") for key in state_dict):
            pipeline.load_lora_into_text_encoder(state_dict, alphas, encoder, prefix=prefix,
                                                 adapter_name=use.adapter, _pipeline=pipeline)


def _patch_unet(pipeline: Any, uses: tuple[LoraUse, ...]) -> None:
    """The OpenVINO UNet's weights with these LoRAs' deltas (a new combination compiles once)."""
    from img2img.models import ov_lora

    if not uses:
        pipeline.unet.set_weights_patch(None, None)
        return
    cache = pipeline.unet.__dict__.setdefault("lora_factors", {})
    for use in uses:
        if use.sha256 not in cache:
            cache[use.sha256] = ov_lora.unet_factors(type(pipeline), use.path)
    loras = [(cache[use.sha256], use.weight) for use in uses if cache[use.sha256]]
    key = tuple((use.sha256, use.weight) for use in uses)
    pipeline.unet.set_weights_patch(key if loras else None, (lambda model: ov_lora.patch(model, loras))
                                    if loras else None)


def _loaded(pipeline: Any) -> list[str]:
    if not hasattr(pipeline, "get_list_adapters"):
        return []
    return sorted({name for names in pipeline.get_list_adapters().values() for name in names})


def _forget_old(pipeline: Any, loaded: list[str], keep: set[str]) -> None:
    """Delete adapters beyond MAX_LOADED (those not in use now; the order of loading stands for their age)."""
    spare = [name for name in loaded if name not in keep]
    excess = len(loaded) - MAX_LOADED
    if excess > 0:
        pipeline.delete_adapters(spare[:excess])
