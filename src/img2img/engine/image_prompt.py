"""Image prompts: reference pictures whose look (or layout) steers the denoising, through an IP-Adapter.

``ImagePrompt`` is the request's part (up to four in ``GenerationRequest.image_prompts``): a picture and its
weight, like Midjourney's ``--iw``. The engine loads the request's adapter once (its part cache), encodes each
picture once (the adapter keeps its embedding) and hands the loop an ``ImagePromptConditioner``.

How the tokens reach the UNet, as diffusers' IP-Adapter does: each cross-attention layer attends to the image
tokens beside the text ones (diffusers' ``IPAdapterAttnProcessor2_0``), and adds that attention scaled by the
picture's weight. Each picture is its own set of tokens with its own weight (the adapter's weights are shared, not
copied), and the tokens are projected once per run rather than at every step. OpenVINO's UNet graph takes the
same tokens as each layer's keys and values instead (``ImageTokens.key_values``). ``combine="average"`` (what
``img2img blend`` asks for) mixes the pictures' embeddings by their weights into one image prompt instead, which
acts at the largest weight.

``mode``, the InstantStyle finding: ``style`` gives the pictures to the attention layers that carry style only (the
deepest up block with cross-attention; in SDXL its middle attention), so the reference's look comes through without
its content, as ``--sref`` does; ``layout`` to those that carry the layout (the deepest down block with
cross-attention; in SDXL its second attention); ``both`` to every layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from img2img.engine.conditioning import Conditioner, Step
from img2img.engine.fields import field_table, scalar
from img2img.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

MAX_IMAGE_PROMPTS = 4
MAX_BLEND = 5  # pictures averaged into one image prompt (img2img blend, as Midjourney's /blend)
MODES: tuple[str, ...] = ("both", "style", "layout")
COMBINES: tuple[str, ...] = ("separate", "average")
KIND = "image-prompt"  # the conditioner's kind, as records name it


@dataclass(frozen=True)
class ImagePrompt:
    """A reference picture and how strongly it steers.

    Attributes:
        image: the picture (a PIL image or a path).
    """

    image: Image.Image | Path | str
    weight: float = scalar(float, 1.0, "How strongly the picture steers (0: not at all), like Midjourney's --iw.",
                           0.0, 2.0)

    def validated(self) -> ImagePrompt:
        from img2img.engine.request import check_scalar

        for spec in field_table(ImagePrompt):
            check_scalar(replace(spec, name=f"image_prompts.{spec.name}"), getattr(self, spec.name))
        if not isinstance(self.image, Image.Image | Path | str) or not str(self.image):
            raise InvalidArgument("image_prompts.image", "a picture or a path", type(self.image).__name__)
        return self


@dataclass(frozen=True)
class Reference:
    """An image prompt's picture, read: at its own size, with the hash of its pixels."""

    picture: Image.Image
    sha256: str


def parse_image_prompt(text: str) -> ImagePrompt:
    """The command line's ``FILE[:WEIGHT]``; a file whose name ends in a colon and a number needs ``:1``."""
    path, colon, tail = text.rpartition(":")
    weight = None
    if colon and path and not tail.startswith(("/", "\\")):
        with contextlib.suppress(ValueError):
            weight = float(tail)
    if weight is None:
        return ImagePrompt(Path(text).expanduser()).validated()
    return ImagePrompt(Path(path).expanduser(), weight).validated()


def blend_prompts(pictures: list[Any], weights: list[float] | None = None, argument: str = "blend",
                  weights_argument: str = "blend_weights") -> tuple[ImagePrompt, ...]:
    """The image prompts of a blend of 2 to MAX_BLEND ``pictures`` (as Midjourney's /blend): ``weights`` are
    relative (2,1: the first counts twice), scaled so that the largest is 1; none: equal."""
    if not 2 <= len(pictures) <= MAX_BLEND:
        raise InvalidArgument(argument, f"2 to {MAX_BLEND} pictures", f"{len(pictures)}")
    weights = [1.0] * len(pictures) if weights is None else list(weights)
    if len(weights) != len(pictures):
        raise InvalidArgument(weights_argument, f"one weight per picture ({len(pictures)})", len(weights))
    if any(isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 100 for w in weights) or \
            not max(weights):
        raise InvalidArgument(weights_argument, "numbers in [0, 100], not all 0", weights)
    return tuple(ImagePrompt(picture, weight / max(weights)) for picture, weight in zip(pictures, weights, strict=True))


def check_image_prompts(prompts: object, combine: str = "separate") -> tuple[ImagePrompt, ...]:
    """A request's ``image_prompts``: up to MAX_IMAGE_PROMPTS ImagePrompt objects (MAX_BLEND averaged), each
    checked."""
    if not isinstance(prompts, tuple | list) or not all(isinstance(p, ImagePrompt) for p in prompts):
        raise InvalidArgument("image_prompts", "a tuple of img2img.ImagePrompt", type(prompts).__name__)
    most = MAX_BLEND if combine == "average" else MAX_IMAGE_PROMPTS
    if len(prompts) > most:
        raise InvalidArgument("image_prompts", f"at most {most} pictures{' to average' if most == MAX_BLEND else ''}",
                              len(prompts))
    return tuple(prompt.validated() for prompt in prompts)


def prompts_from_record(entry: dict[str, Any] | None, images: list[Any]) -> tuple[ImagePrompt, ...]:
    """The image prompts that a recorded entry describes, each given its picture from ``images`` in order, each
    picture checked against the recorded hash."""
    from img2img.imageio.source import pixels_sha256, read_source

    recorded = list(entry.get("images", ())) if entry else []
    if len(images) != len(recorded):
        count = f"{len(recorded)} picture{'s' if len(recorded) != 1 else ''}"
        raise InvalidArgument("image_prompts", f"{count} (of the image prompts it was made with, in order)",
                              f"{len(images)}")
    prompts = []
    for number, (item, image) in enumerate(zip(recorded, images, strict=True)):
        found = pixels_sha256(read_source(image, field="image_prompts.image").rgb)
        if found != item["sha256"]:
            raise InvalidArgument("image_prompts", f"image prompt {number + 1} with SHA-256 {item['sha256'][:12]}...",
                                  f"a picture with SHA-256 {found[:12]}...")
        prompts.append(ImagePrompt(image, float(item.get("weight", 1.0))))
    return tuple(prompts)


def layer_factors(unet: Any, mode: str) -> dict[str, float]:
    """Each cross-attention layer's share of the image prompt (by its processor's name) in ``mode``."""
    return layer_shares([name for name in unet.attn_processors if name.endswith("attn2.processor")], unet.config,
                        mode)


def layer_shares(names: list[str], config: Any, mode: str) -> dict[str, float]:
    """``layer_factors`` for the cross-attention layers ``names`` of a UNet of ``config``."""
    if mode == "both":
        return dict.fromkeys(names, 1.0)
    style = mode == "style"
    prefix, types = ("up_blocks", config.up_block_types) if style else ("down_blocks", config.down_block_types)
    crossed = [index for index, kind in enumerate(types) if "CrossAttn" in kind]
    block = (crossed[0] if style else crossed[-1]) if crossed else -1
    xl = config.addition_embed_type == "text_time"  # SDXL: one attention of the block, as InstantStyle found
    target = f"{prefix}.{block}.attentions.1." if xl else f"{prefix}.{block}.attentions."
    return {name: float(name.startswith(target)) for name in names}


def image_tokens(adapter: Any, references: list[Reference], prompts: tuple[ImagePrompt, ...], combine: str
                 ) -> tuple[tuple[tuple[torch.Tensor, torch.Tensor], ...], tuple[float, ...]]:
    """The sets of image tokens that ``prompts`` give through ``adapter`` (a LoadedAdapter), each with its
    weight: one per picture ("separate"), or one of the pictures' embeddings averaged by weight ("average")."""
    pairs = [adapter.embeddings(ref.picture, ref.sha256) for ref in references]
    weights = [prompt.weight for prompt in prompts]
    if combine == "separate":
        return tuple(adapter.tokens(*pair) for pair in pairs), tuple(weights)
    if not sum(weights):
        return (), ()
    mixed = pairs[0] if len(pairs) == 1 else [
        sum(w * pair[side] for w, pair in zip(weights, pairs, strict=True)) / sum(weights) for side in (0, 1)]
    return (adapter.tokens(*mixed),), (max(weights),)


@dataclass(frozen=True, eq=False)
class ImagePromptConditioner(Conditioner):
    """The image prompts of a run: each set of image tokens beside the text in every cross-attention layer that
    the mode gives them to, scaled by its weight."""

    adapter: Any  # img2img.models.ip_adapters.LoadedAdapter
    tokens: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per set: (unconditional, conditional)
    scales: tuple[float, ...]  # per set
    pictures: tuple[tuple[str, float], ...] = ()  # each picture's hash and weight, as the record shows them
    mode: str = "both"
    combine: str = "separate"
    name: str = ""  # the adapter's name and hash, as the record shows them
    sha256: str = ""
    _inputs: dict[bool, ImageTokens] = field(default_factory=dict, repr=False)  # per guidance: made once per run
    kind = KIND
    inputs = ("ip_hidden_states",)

    def acts(self) -> bool:
        return any(scale != 0 for scale in self.scales)

    @contextlib.contextmanager
    def attach(self, pipeline: Any) -> Iterator[None]:
        """diffusers' IP-Adapter attention on the UNet's cross-attention layers for the run, with each picture's
        weight times the layer's share of the mode; the UNet's own processors come back after."""
        if not self.acts() or getattr(pipeline.unet, "takes_image_prompts", False):  # OpenVINO's takes keys
            yield
            return
        unet = pipeline.unet
        own = unet.attn_processors
        factors = layer_factors(unet, self.mode)
        unet.set_attn_processor({name: _processor(self.adapter.layers[name], [w * factors[name] for w in self.scales])
                                 if name in factors else processor for name, processor in own.items()})
        try:
            yield
        finally:
            unet.set_attn_processor(own)

    def unet_inputs(self, step: Step) -> dict[str, Any]:
        import torch

        if not self.acts():
            return {}
        if step.guided not in self._inputs:
            tokens = [torch.cat(pair) if step.guided else pair[1] for pair in self.tokens]
            self._inputs[step.guided] = ImageTokens(tokens, self)
        return {"ip_hidden_states": self._inputs[step.guided]}

    def key_values(self, tokens: list[torch.Tensor], layers: list[str], config: Any
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's image keys and values, (pictures, batch, tokens, width), with each picture's weight and the
        layer's share of the mode folded into the values: what a graph that takes them needs
        (``img2img.models.ov_image_prompt``)."""
        import torch

        shares = layer_shares(layers, config, self.mode)
        pairs = []
        with torch.inference_mode():
            for name in layers:
                keys, values = self.adapter.layers[name]
                pairs.append((torch.stack([keys(part) for part in tokens]).float(),
                              torch.stack([values(part) * (scale * shares[name])
                                           for part, scale in zip(tokens, self.scales, strict=True)]).float()))
        return pairs

    def metadata(self) -> dict[str, Any] | None:
        return {"adapter": self.name, "adapter_sha256": self.sha256, "mode": self.mode, "combine": self.combine,
                "images": [{"sha256": sha256, "weight": weight} for sha256, weight in self.pictures]}


class ImageTokens(list):  # type: ignore[type-arg]
    """The image tokens of each picture, as diffusers' IP-Adapter attention reads them beside the text; and, for
    a UNet graph that takes each layer's keys and values instead, those (``key_values``, made once per layer
    list)."""

    def __init__(self, tokens: list[torch.Tensor], conditioner: ImagePromptConditioner) -> None:
        super().__init__(tokens)
        self.conditioner = conditioner
        self._made: dict[tuple[str, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def key_values(self, layers: list[str], config: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if tuple(layers) not in self._made:
            self._made[tuple(layers)] = self.conditioner.key_values(list(self), layers, config)
        return self._made[tuple(layers)]


def _processor(layer: tuple[torch.nn.Module, torch.nn.Module], scales: list[float]) -> Any:
    """diffusers' IP-Adapter attention for one layer and len(scales) pictures, on the adapter's own key and value
    projections (shared by every picture, not copied)."""
    import torch
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    keys, values = layer
    processor = IPAdapterAttnProcessor2_0.__new__(IPAdapterAttnProcessor2_0)
    torch.nn.Module.__init__(processor)
    processor.hidden_size, processor.cross_attention_dim = keys.out_features, keys.in_features
    processor.num_tokens, processor.scale = [0] * len(scales), list(scales)  # num_tokens: for a form we never pass
    processor.to_k_ip = torch.nn.ModuleList([keys] * len(scales))
    processor.to_v_ip = torch.nn.ModuleList([values] * len(scales))
    return processor
