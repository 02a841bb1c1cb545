"""The OpenVINO UNet's stand-in: called like diffusers' UNet2DConditionModel, it runs the model's own graph, the
graph that takes ControlNet residuals (``ov_control``) or the one that takes image prompts' keys and values
(``ov_image_prompt``), one compiled at a time, and hands any other call to the PyTorch UNet (with a note). Step
caching's calls (``deep`` and ``shallow``) run on two graphs of their own (``ov_step_cache``); while a run merges
tokens, its plain calls run on the graph that merges (``ov_merge``) and its others with PyTorch, merging too."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from img2img.models.ov_runtime import OpenVinoFailure, _array, _Config, _Fallback, _Request


class OpenVinoUNet:
    """Called like a diffusers UNet2DConditionModel (the arguments the engine passes)."""

    dtype = torch.float32
    device = torch.device("cpu")
    takes_image_prompts = True  # image tokens arrive beside the text; the graph takes their keys and values

    def __init__(self, request: _Request, config: dict[str, Any], fallback: _Fallback, control: Any = None,
                 prompts: Any = None, cached: Any = None, merged: Any = None) -> None:
        self.config = _Config(config)
        self._request, self.fallback, self.control, self.prompts = request, fallback, control, prompts
        self.cached = cached  # the step-caching graphs (ov_step_cache.StepCacheGraphs)
        self.merged = merged  # the graph that merges tokens (ov_merge.MergeGraph)
        self._patch: tuple[Any, Callable[[Any], None] | None] = (None, None)
        self.control_failed = self.prompts_failed = self.cached_failed = self.merged_failed = False
        self.merge_ratio, self.merge_levels = 0.0, 1  # while a run merges tokens: the share merged, and where
        self._merge_noted = False  # whether this run's note on merging with PyTorch is written
        self.release_before_decoding = False  # the float32 graphs: freed before each decode (engine.diffusion)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
        return self.forward(*args, **kwargs)

    @contextmanager
    def merging_tokens(self, ratio: float, levels: int = 1) -> Iterator[None]:
        """Token merging for a run (``img2img.engine.token_merge``): plain calls run on the graph that merges at
        ``levels`` levels, calls with other inputs (ControlNets, image prompts, step caching) with PyTorch's UNet,
        merging too."""
        self.merge_ratio, self.merge_levels, self._merge_noted = ratio, levels, False
        if self.merged is not None and self.merged.levels != levels:  # that many levels' graph in its place
            if self.merged.request is not None:
                self.merged.request.drop()
            self.merged, self.merged_failed = type(self.merged)(self.merged.site, levels), False
        try:
            yield
        finally:
            self.merge_ratio = 0.0

    def _merged_usable(self) -> bool:
        return self.merged is not None and not self.merged_failed and not self.fallback.failed

    def _merged(self, inputs: list[np.ndarray]) -> torch.Tensor | None:
        """A plain step through the graph that merges tokens; None when it cannot run (then PyTorch does)."""
        if not self._merged_usable():
            return None
        try:
            self._keep_compiled(self.merged.request)
            return self.merged.run(inputs, self.merge_ratio, self._patch)
        except OpenVinoFailure as failure:
            self.merged_failed = True
            self.fallback.notes.append(f"OpenVINO could not run the UNet that merges tokens ({failure}); it runs "
                                       "with PyTorch instead")
            return None

    def _keep_compiled(self, keep: Any) -> None:
        """Free every compiled UNet graph but ``keep`` (a request, or the step-caching pair): one full copy of the
        weights is resident at a time."""
        for graph in (self._request, *(g.request for g in (self.control, self.prompts, self.merged) if g)):
            if graph is not None and graph is not keep:
                graph.drop()
        if self.cached is not None and self.cached is not keep:
            self.cached.drop()

    def _torch_merging(self) -> contextlib.AbstractContextManager[None]:
        """The PyTorch UNet merging tokens for a call while the run merges (with a note, once a run), else as is."""
        from img2img.engine.token_merge import merging_tokens
        from img2img.errors import InvalidArgument

        if not self.merge_ratio:
            return contextlib.nullcontext()
        if self._patch[1] is not None:  # LoRAs live in the graphs' weights here, not in the PyTorch UNet's
            raise InvalidArgument("merge_tokens", "0 with LoRAs and other inputs on the OpenVINO backend (run "
                                  "--backend torch to merge tokens with them)", self.merge_ratio)
        if not self._merge_noted and self._merged_usable():  # else a note says why all of it runs with PyTorch
            self._merge_noted = True
            self.fallback.notes.append("OpenVINO's UNet graphs merge tokens only in plain steps; this request's "
                                       "other steps run with PyTorch")
        return merging_tokens(self.fallback.module, self.merge_ratio, self.merge_levels)

    def release_graphs(self, note: str | None) -> None:
        """Free every compiled UNet graph (its repacked weights: SD 1.5 3.4 GB in float32), with a note on the
        result unless ``note`` is None; the next step compiles what it needs again."""
        self._keep_compiled(None)
        if note is not None:
            self.fallback.notes.append(note)

    def set_weights_patch(self, key: Any, patcher: Callable[[Any], None] | None) -> None:
        """Run with changed weights (LoRAs) from the next call; ``key`` None with no patcher: the model's own."""
        self._patch = (key, patcher)
        self._request.set_patch(key, patcher)

    def _controlled(self, inputs: list[np.ndarray], others: dict[str, Any]) -> torch.Tensor | None:
        """The step through the graph that takes ControlNet residuals, when ``others`` are just those; None when
        it cannot run them (then PyTorch does, with a note)."""
        down, mid = others.get("down_block_additional_residuals"), others.get("mid_block_additional_residual")
        if self.control is None or self.control_failed or down is None or mid is None or len(others) != 2:
            return None
        try:
            self._keep_compiled(self.control.request)
            return self.control.run(inputs, list(down), mid, self._patch)
        except OpenVinoFailure as failure:
            self.control_failed = True
            self.fallback.notes.append(f"OpenVINO could not run the UNet with ControlNet inputs ({failure}); "
                                       "it runs with PyTorch instead")
            return None

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None, added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                return_dict: bool = False, **others: Any) -> tuple[torch.Tensor]:
        """``others``: inputs the traced graph does not take (a conditioner's); given any, this call runs with
        PyTorch rather than drop them."""
        others = {name: value for name, value in others.items() if value is not None}
        if self.merge_ratio and not isinstance(encoder_hidden_states, tuple):
            merged = None if others else self._merged(_own_inputs(sample, timestep, encoder_hidden_states,
                                                                  timestep_cond, added_cond_kwargs))
            if merged is not None:
                return (merged,)
            return self._in_torch(sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs, others)
        if isinstance(encoder_hidden_states, tuple):  # image prompts' tokens beside the text
            return self._prompted(sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs, others)
        inputs = _own_inputs(sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs)
        if not self.fallback.failed and others:
            controlled = self._controlled(inputs, others)
            if controlled is not None:
                return (controlled,)
        if not self.fallback.failed and not others:
            try:
                self._keep_compiled(self._request)
                return (self._request(inputs),)
            except OpenVinoFailure as failure:
                self.fallback.take_over(failure)
        return self._in_torch(sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs, others)

    def _prompted(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: tuple[Any, Any],
                  timestep_cond: torch.Tensor | None, added_cond_kwargs: dict[str, torch.Tensor] | None,
                  others: dict[str, Any]) -> tuple[torch.Tensor]:
        """A step with image prompts: through the graph that takes their keys and values, or (with other inputs
        too, or when that graph fails) with PyTorch, its cross-attention layers given the same keys and values."""
        from img2img.models.ov_image_prompt import cross_attention_layers, run_in_torch

        text, tokens = encoder_hidden_states
        if not self.fallback.failed and not self.prompts_failed and not others and self.prompts is not None \
                and not self.merge_ratio:
            inputs = _own_inputs(sample, timestep, text, timestep_cond, added_cond_kwargs)
            try:
                layers = [f"{name}.processor" for name, _ in self.prompts.layers()]
                key_values = tokens.key_values(layers, self.config)
                self._keep_compiled(self.prompts.request)
                return (self.prompts.run(inputs, key_values, self._patch),)
            except OpenVinoFailure as failure:
                self.prompts_failed = True
                self.fallback.notes.append(f"OpenVINO could not run the UNet with image prompts ({failure}); it runs "
                                           "with PyTorch instead")
        unet = self.fallback.module
        layers = [f"{name}.processor" for name, _ in cross_attention_layers(unet)]
        key_values = tokens.key_values(layers, self.config)
        return run_in_torch(unet, key_values, lambda: self._in_torch(sample, timestep, text, timestep_cond,
                                                                     added_cond_kwargs, others))

    def deep(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
             timestep_cond: torch.Tensor | None = None, added_cond_kwargs: dict[str, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step caching's full step: the prediction and the deep features (``img2img.engine.step_cache``)."""
        from img2img.engine.step_cache import deep

        if self._caching():
            inputs = _own_inputs(sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs)
            try:
                return self.cached.deep(inputs, self._patch)
            except OpenVinoFailure as failure:
                self._cache_failed(failure)
        dtype, extra = self.fallback.dtype, _extra(timestep_cond, added_cond_kwargs, self.fallback.dtype)
        with torch.no_grad(), self._torch_merging():
            output, feature = deep(self.fallback.module, sample.to(dtype), timestep,
                                   encoder_hidden_states=encoder_hidden_states.to(dtype), **extra)
        return output.float(), feature

    def shallow(self, sample: torch.Tensor, timestep: torch.Tensor, feature: torch.Tensor,
                encoder_hidden_states: torch.Tensor, timestep_cond: torch.Tensor | None = None,
                added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Step caching's other steps: the prediction from the outer blocks and a full step's ``feature``."""
        from img2img.engine.step_cache import shallow

        if self._caching():
            inputs = _own_inputs(sample, timestep, encoder_hidden_states, timestep_cond, added_cond_kwargs)
            try:
                return self.cached.shallow(inputs, feature.float(), self._patch)
            except OpenVinoFailure as failure:
                self._cache_failed(failure)
        dtype, extra = self.fallback.dtype, _extra(timestep_cond, added_cond_kwargs, self.fallback.dtype)
        with torch.no_grad(), self._torch_merging():
            return shallow(self.fallback.module, sample.to(dtype), timestep, feature.to(dtype),
                           encoder_hidden_states.to(dtype), **extra).float()

    def _caching(self) -> bool:
        """Whether the step-caching graphs run this call (else PyTorch does); the other UNet graphs are dropped."""
        if self.fallback.failed or self.cached_failed or self.cached is None or self.merge_ratio:
            return False
        self._keep_compiled(self.cached)
        return True

    def _cache_failed(self, failure: OpenVinoFailure) -> None:
        self.cached_failed = True
        self.cached.drop()
        self.fallback.notes.append(f"OpenVINO could not run the UNet for step caching ({failure}); it runs with "
                                   "PyTorch instead")

    def _in_torch(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: Any,
                  timestep_cond: torch.Tensor | None, added_cond_kwargs: dict[str, torch.Tensor] | None,
                  others: dict[str, Any]) -> tuple[torch.Tensor]:
        """The step with the PyTorch UNet (in its dtype), with every input as given."""
        dtype, unet = self.fallback.dtype, self.fallback.module
        extra = {} if added_cond_kwargs is None else {"added_cond_kwargs": _to_dtype(added_cond_kwargs, dtype)}
        extra |= {name: _to_dtype(value, dtype) for name, value in others.items()}
        with self._torch_merging():
            output = unet(sample.to(dtype), timestep, _to_dtype(encoder_hidden_states, dtype), return_dict=False,
                          timestep_cond=None if timestep_cond is None else timestep_cond.to(dtype), **extra)[0]
        return (output.float(),)


def _own_inputs(sample: torch.Tensor, timestep: torch.Tensor | float, text: torch.Tensor,
                timestep_cond: torch.Tensor | None, added_cond_kwargs: dict[str, torch.Tensor] | None
                ) -> list[np.ndarray]:
    """The inputs of the model's own UNet graph, in its order (``ov_runtime.unet_input_shapes``)."""
    inputs = [_array(sample), np.asarray(float(timestep), dtype=np.float32), _array(text)]
    if added_cond_kwargs:
        inputs += [_array(added_cond_kwargs["text_embeds"]), _array(added_cond_kwargs["time_ids"])]
    if timestep_cond is not None:
        inputs.append(_array(timestep_cond))
    return inputs


def _extra(timestep_cond: torch.Tensor | None, added_cond_kwargs: dict[str, torch.Tensor] | None,
           dtype: torch.dtype) -> dict[str, Any]:
    """The PyTorch UNet's optional keyword inputs in its ``dtype``."""
    extra: dict[str, Any] = {} if timestep_cond is None else {"timestep_cond": timestep_cond.to(dtype)}
    if added_cond_kwargs:
        extra["added_cond_kwargs"] = _to_dtype(added_cond_kwargs, dtype)
    return extra


def _to_dtype(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (alone, or in a list, tuple or dict) in ``dtype``; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list | tuple):
        return type(value)(_to_dtype(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _to_dtype(item, dtype) for key, item in value.items()}
    return value
