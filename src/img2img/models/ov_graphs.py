"""The UNet's other OpenVINO graphs, on one pattern: the model's UNet traced with more inputs (ControlNet residuals,
image prompts' keys and values, step caching's features, token merging's ratio), converted on the first request
that needs one (from the float32 PyTorch UNet, once per model and variant, saved beside the model's other IR) and
compiled for its calls. ``convert`` and ``save`` also serve the ControlNets' own graphs.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from img2img.models import ov_runtime

Shape = tuple[int, ...]
# ``build(unet, xl, conditioned, own)``: the module to trace, all its input shapes and an example input for each,
# from the float32 UNet, whether it is an SDXL one and has a ``timestep_cond``, and its own graph's input shapes.
Build = Callable[[Any, bool, bool, list[Shape]], tuple[torch.nn.Module, list[Shape], list[torch.Tensor]]]


@dataclass(frozen=True)
class GraphSite:
    """What a model's UNet graphs share: where they live, how they compile, where the float32 UNet comes from."""

    core: Any
    folder: Path
    options: dict[str, str]
    turn: Any
    variant: str
    float_unet: Callable[[], torch.nn.Module]
    config: dict[str, Any]

    def request(self, name: str, edit: Callable[[Any], None] | None = None) -> ov_runtime._Request:
        return ov_runtime._Request(self.core, self.folder / name, self.options, self.turn, edit=edit)

    def export(self, name: str, what: str, build: Build) -> None:
        """Convert the graph ``name`` unless it is there; ``what`` names it in the one-line failure."""
        xml = self.folder / name
        if xml.is_file():
            return
        try:
            unet = self.float_unet()
            xl, conditioned = ov_runtime.unet_extras(self.config)
            model = convert(*build(unet, xl, conditioned, ov_runtime.unet_input_shapes(unet)))
            del unet
            save(model, xml, self.variant, self.variant.endswith("-int8"))
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ov_runtime.OpenVinoFailure(f"{what} could not be converted: {detail[:160]}") from exc


def examples(shapes: list[Shape]) -> list[torch.Tensor]:
    """Zeros for tracing at the odd example latent side (``ov_runtime._example_shape``)."""
    return [torch.zeros(ov_runtime._example_shape(shape, 1)) for shape in shapes]


class UNetGraph:
    """One UNet graph with more inputs: ``NAME`` its file, ``WHAT`` its name in a failure, ``_build`` its module."""

    NAME: ClassVar[str]
    WHAT: ClassVar[str]

    def __init__(self, site: GraphSite) -> None:
        self.site, self.name = site, self.NAME  # a subclass may name one of several graphs of its kind
        self.request: ov_runtime._Request | None = None

    def _build(self, unet: Any, xl: bool, conditioned: bool, own: list[Shape]
               ) -> tuple[torch.nn.Module, list[Shape], list[torch.Tensor]]:
        raise NotImplementedError

    def _export(self) -> None:
        self.site.export(self.name, self.WHAT, self._build)

    def _compiled(self, patch: tuple[Any, Callable[[Any], None] | None]) -> ov_runtime._Request:
        """The graph's request with ``patch`` (LoRAs) applied, converting the graph first when it is not there."""
        if self.request is None:
            self._export()
            self.request = self.site.request(self.name)
        self.request.set_patch(*patch)
        return self.request


def convert(module: torch.nn.Module, shapes: list[Shape], example: list[torch.Tensor]) -> Any:
    """``module`` traced on ``example`` as an OpenVINO model whose inputs have ``shapes`` (-1: dynamic); each input
    float32, or int64 where its example is."""
    import openvino as ov

    types = [ov.Type.i64 if tensor.dtype == torch.int64 else ov.Type.f32 for tensor in example]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's (and diffusers') remarks on the traced code
        return ov.convert_model(module.eval(), example_input=tuple(example),
                                input=[([max(side, -1) for side in shape], kind)
                                       for shape, kind in zip(shapes, types, strict=True)])


def save(model: Any, xml: Path, variant: str, int8: bool) -> None:
    """Save ``model`` as ``xml`` atomically (a reader sees the whole IR or none); its matrix multiplies in 8 bits
    for an int8 variant."""
    import openvino as ov

    staging = Path(tempfile.mkdtemp(dir=xml.parent, prefix=".staging-"))
    try:
        ov.save_model(model, staging / xml.name, compress_to_fp16=variant.startswith("bf16"))
        if int8:
            quantized = ov_runtime._int8_weights(ov.Core().read_model(staging / xml.name))
            ov.save_model(quantized, staging / f"int8-{xml.name}", compress_to_fp16=False)
            for suffix in (".xml", ".bin"):
                (staging / f"int8-{xml.stem}{suffix}").replace(staging / f"{xml.stem}{suffix}")
        (staging / xml.with_suffix(".bin").name).replace(xml.with_suffix(".bin"))
        (staging / xml.name).replace(xml)  # last: the .xml's presence means the IR is complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)
