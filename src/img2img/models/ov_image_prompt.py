"""OpenVINO for image prompts: a UNet graph whose cross-attention layers also attend to image tokens.

An IP-Adapter adds, in each cross-attention layer, attention from the layer's queries to the image tokens' keys
and values (diffusers' ``IPAdapterAttnProcessor2_0``), scaled per picture and layer. Keys and values do not depend
on the step: the run projects them once (``ImageTokens.key_values``) with the picture's weight and the layer's
share of the mode folded into the values (attention is linear in them), and the graph takes them as inputs, one
key and one value tensor per layer, each (pictures, batch, tokens, width). So the graph holds no adapter's weights:
one graph per model (``unet_ip.xml`` beside its other IR, converted once from the float32 UNet) serves every
adapter, variant (4 or 16 tokens) and number of pictures. Only one UNet graph is compiled at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from img2img.models import ov_runtime
from img2img.models.ov_graphs import Shape, UNetGraph, examples

EXAMPLE_TOKENS = 4


class KeyValueAttention:
    """A cross-attention layer's processor that adds attention to given image keys and values (already scaled);
    the text attention is diffusers' ``AttnProcessor2_0``'s. Traced into the graph, and run eagerly when PyTorch
    stands in for it."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None  # (pictures, batch, tokens, width)
        self.values: torch.Tensor | None = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        import torch.nn.functional as F

        residual = hidden_states
        batch, length, _ = hidden_states.shape
        text = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            text = attn.norm_encoder_hidden_states(text)
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(text), attn.to_v(text)
        head = key.shape[-1] // attn.heads

        def split(tensor: torch.Tensor) -> torch.Tensor:  # (..., batch, tokens, width) -> (..., batch, heads, ...)
            return tensor.unflatten(-1, (attn.heads, head)).transpose(-3, -2)

        query = split(query)
        out = F.scaled_dot_product_attention(query, split(key), split(value), attn_mask=None, dropout_p=0.0)
        if self.keys is not None and self.values is not None:
            scores = torch.softmax(query.unsqueeze(0) @ split(self.keys).transpose(-1, -2) * head**-0.5, dim=-1)
            out = out + (scores @ split(self.values)).sum(0)  # each picture's attention, its weight in the values
        out = out.transpose(1, 2).reshape(batch, length, attn.heads * head).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_layers(unet: Any) -> list[tuple[str, int]]:
    """Each cross-attention layer's processor name and width, in the UNet's order."""
    return [(name.removesuffix(".processor"), module.to_k.out_features) for name, module in unet.named_modules()
            if hasattr(module, "set_processor") and name.endswith("attn2")]


class _ImagePromptUNetExport(ov_runtime._UNetExport):
    """The UNet with each cross-attention layer's image keys and values as its last inputs."""

    def __init__(self, unet: Any, xl: bool, conditioned: bool, processors: list[KeyValueAttention]) -> None:
        super().__init__(unet, xl, conditioned)
        self.processors = processors

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *extra: torch.Tensor) -> Any:
        count = 2 * len(self.processors)
        own, pairs = extra[:-count], extra[-count:]
        for index, processor in enumerate(self.processors):
            processor.keys, processor.values = pairs[2 * index], pairs[2 * index + 1]
        return super().forward(sample, timestep, text, *own)


def with_key_values(unet: Any) -> list[KeyValueAttention]:
    """Put a KeyValueAttention on each cross-attention layer of ``unet`` (the others keep theirs)."""
    processors = []
    for name, module in unet.named_modules():
        if hasattr(module, "set_processor") and name.endswith("attn2"):
            processor = KeyValueAttention()
            module.set_processor(processor)
            processors.append(processor)
    return processors


class ImagePromptGraph(UNetGraph):
    """The UNet graph that takes image keys and values."""

    NAME, WHAT = "unet_ip.xml", "the UNet with image prompt inputs"

    def layers(self) -> list[tuple[str, int]]:
        """The cross-attention layers whose keys and values the graph takes, in its order (converting it first)."""
        self._export()
        xml = self.site.folder / self.NAME
        return [tuple(entry) for entry in json.loads(xml.with_suffix(".json").read_text())]  # type: ignore[misc]

    def run(self, inputs: list[np.ndarray], key_values: list[tuple[torch.Tensor, torch.Tensor]],
            patch: tuple[Any, Callable[[Any], None] | None]) -> torch.Tensor:
        arrays = [ov_runtime._array(tensor) for pair in key_values for tensor in pair]
        return self._compiled(patch)([*inputs, *arrays])

    def _build(self, unet: Any, xl: bool, conditioned: bool, own: list[Shape]
               ) -> tuple[torch.nn.Module, list[Shape], list[torch.Tensor]]:
        layers = cross_attention_layers(unet)
        (self.site.folder / self.NAME).with_suffix(".json").write_text(json.dumps(layers))
        shapes = [*own, *[(-1, -1, -1, width) for _, width in layers for _ in range(2)]]
        example = examples(own) + [torch.zeros(1, 2, EXAMPLE_TOKENS, width) for _, width in layers for _ in range(2)]
        return _ImagePromptUNetExport(unet, xl, conditioned, with_key_values(unet)), shapes, example


def run_in_torch(unet: Any, key_values: list[tuple[torch.Tensor, torch.Tensor]], call: Callable[[], Any]) -> Any:
    """``call()`` with ``unet``'s cross-attention layers attending to ``key_values`` too, its own processors back
    after."""
    own = unet.attn_processors
    try:
        for processor, (keys, values) in zip(with_key_values(unet), key_values, strict=True):
            processor.keys, processor.values = keys.to(unet.dtype), values.to(unet.dtype)
        return call()
    finally:
        unet.set_attn_processor(own)
