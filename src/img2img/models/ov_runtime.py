"""OpenVINO for the UNet and the VAE on the CPU: about 1.25x PyTorch's bf16 speed per UNet step on our machines.

Each component is converted from its PyTorch module once (about a minute for SD 1.5), saved as OpenVINO IR in the
user cache under the weights' SHA-256, and compiled for the input shapes of its first call (again when they
change). Stand-ins with the call signatures the engine uses replace ``pipeline.unet`` and ``pipeline.vae``; they
take and return fp32 tensors, while OpenVINO computes in bf16 where the CPU has it (``INFERENCE_PRECISION_HINT``).
When the IR is already cached, the PyTorch UNet and VAE are never loaded, which keeps peak memory down.

If OpenVINO cannot compile or run a component at some shape, the stand-in says so in one line (a note on the
result) and runs that component with PyTorch from then on, loading it on first need; nothing fails.

OpenVINO repacks the weights when it compiles; the IR file's mapped pages are released meanwhile (``pagecache``),
so only the repacked copy stays resident. This halves the UNet's resident size (SD 1.5: 3.9 GB to 2.45 GB at
512x512) without changing a result.

A variant names the IR: its precision ("bf16" or "f32"), then "-int8" when the UNet is quantized (the opt-in
``quantize="int8"``: its matrix multiplies in 8 bits, weights and activations, calibrated (``ov_int8``); the other
graphs of such a variant store their matrix multiplies' weights in 8 bits (``_int8_weights``); the VAE keeps the
variant's precision).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from img2img.models import pagecache
from img2img.models.paths import cache_dir

# Bump when the export changes, so cached IR is rebuilt (2: traced at an odd latent size; 3: any prompt length).
IR_VERSION = "3"
INT8_VERSION = "2"  # the int8 variant's own (2: matrix multiplies quantized, activations included, calibrated)
TOKENS = -2  # in an input shape: a dynamic number of prompt tokens (77 per chunk of the prompt)
PARTS = ("unet", "vae_encoder", "vae_decoder")


def ir_variant(dtype: torch.dtype, quantize: str = "none") -> str:
    """The name of the IR for a placement's dtype and quantization: "bf16", "f32", "bf16-int8", "f32-int8"."""
    precision = "bf16" if dtype == torch.bfloat16 else "f32"
    return precision if quantize == "none" else f"{precision}-{quantize}"


def _threads() -> dict[str, int]:
    """OpenVINO takes every core unless told; OMP_NUM_THREADS, the knob PyTorch reads too (and that Ray sets for
    each worker to the cores it was given), caps it."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return {"INFERENCE_NUM_THREADS": int(value)} if value.isdigit() and int(value) > 0 else {}


def ir_folder(sha256: str, variant: str) -> Path:
    quantized = f"q{INT8_VERSION}" if variant.endswith("-int8") else ""
    return cache_dir() / "openvino" / f"{sha256[:24]}-{variant}-v{IR_VERSION}{quantized}"


def has_ir(sha256: str, variant: str) -> bool:
    folder = ir_folder(sha256, variant)
    return all((folder / f"{part}.xml").is_file() for part in PARTS) and (folder / "configs.json").is_file()


def export_ir(components: Callable[[str], torch.nn.Module], sha256: str, variant: str, pipeline: Any = None
              ) -> Path:
    """Convert a model's UNet and VAE to OpenVINO IR in the cache (atomically) and return the folder.

    ``components`` gives the UNet or the VAE ("unet", "vae"); each is converted in float32 (OpenVINO picks its own
    precision) and let go before the other is asked for, so a loader that reads them one at a time never holds
    both (the first float32 conversion of SD 1.5: 3.4 GB of UNet, not 4.3 GB of pipeline). The int8 variant
    calibrates on ``pipeline``'s own text encoders and scheduler."""
    import openvino as ov

    target = ir_folder(sha256, variant)
    if has_ir(sha256, variant):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    # Another variant re-saves the float32 IR when there is one: the same graph, without tracing again.
    full = ir_folder(sha256, "f32") if variant != "f32" and has_ir(sha256, "f32") else None
    configs: dict[str, Any] = {}
    try:
        for component in ("unet", "vae"):
            module = components(component).float()
            configs[component] = dict(module.config)
            for part, (graph, inputs, factor) in _export_modules(component, module).items():
                if full is not None:
                    model = ov.Core().read_model(full / f"{part}.xml")
                else:
                    example = tuple(torch.zeros(_example_shape(shape, factor)) for shape in inputs)
                    with torch.no_grad(), warnings.catch_warnings():
                        # Tracing fixes diffusers' shape-dependent branches to the example's: see _example_shape.
                        warnings.simplefilter("ignore", torch.jit.TracerWarning)
                        model = ov.convert_model(graph.eval(), example_input=example,
                                                 input=[([max(side, -1) for side in shape], ov.Type.f32)
                                                        for shape in inputs])
                ov.save_model(model, staging / f"{part}.xml", compress_to_fp16=variant.startswith("bf16"))
                del model, graph
            if component == "unet" and variant.endswith("-int8"):  # from the saved IR, whose other weights are fp16
                from img2img.models.ov_int8 import quantize_unet

                module.to("meta")  # its IR is saved and the stand-in replaces it: 3.4 GB (SD 1.5) less while quantizing
                ov.save_model(quantize_unet(staging / "unet.xml", pipeline, variant), staging / "int8.xml",
                              compress_to_fp16=False)
                for suffix in (".xml", ".bin"):
                    (staging / f"int8{suffix}").replace(staging / f"unet{suffix}")
            del module
            gc.collect()
        (staging / "configs.json").write_text(json.dumps(configs, default=list))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# Loads a component ("unet" or "vae") with PyTorch, for a shape that OpenVINO cannot run.
TorchLoader = Callable[[str], torch.nn.Module]


class OpenVinoFailure(RuntimeError):
    """OpenVINO could not compile or run a component for some input shapes."""


def attach(pipeline: Any, sha256: str, variant: str, fallback: TorchLoader, float_unet: Callable[[], torch.nn.Module]
           ) -> None:
    """Put stand-ins for the cached IR in ``pipeline.unet`` and ``pipeline.vae``; each compiles on first use and
    falls back to the PyTorch component (from ``fallback``) for what OpenVINO cannot run. ``float_unet`` loads the
    float32 PyTorch UNet, for converting the graphs that take ControlNet residuals (``ov_control``), image
    prompts' keys and values (``ov_image_prompt``), step caching's features (``ov_step_cache``) and token merging
    (``ov_merge``) on first need."""
    import openvino as ov

    from img2img.models.ov_control import ControlGraph
    from img2img.models.ov_graphs import GraphSite
    from img2img.models.ov_image_prompt import ImagePromptGraph
    from img2img.models.ov_merge import MergeGraph
    from img2img.models.ov_step_cache import StepCacheGraphs
    from img2img.models.ov_unet import OpenVinoUNet

    folder = ir_folder(sha256, variant)
    core = ov.Core()
    # No CACHE_DIR: importing OpenVINO's compiled blob measured no faster and no smaller than compiling the IR.
    options = {"INFERENCE_PRECISION_HINT": variant.split("-")[0], "PERFORMANCE_HINT": "LATENCY", **_threads()}
    turn = _Turn()
    requests = {part: _Request(core, folder / f"{part}.xml", options, turn) for part in PARTS}
    configs = json.loads((folder / "configs.json").read_text())
    notes: list[str] = []
    # Plain attribute assignment: a diffusers pipeline would try to register these as modules of a library.
    site = GraphSite(core, folder, options, turn, variant, float_unet, configs["unet"])
    unet = OpenVinoUNet(requests["unet"], configs["unet"], _Fallback("unet", fallback, notes), ControlGraph(site),
                        ImagePromptGraph(site), StepCacheGraphs(site), MergeGraph(site))
    object.__setattr__(pipeline, "unet", unet)
    pipeline.unet.release_before_decoding = variant.split("-")[0] == "f32"  # 3.4 GB for SD 1.5: not beside the VAE
    object.__setattr__(pipeline, "vae", OpenVinoVAE(requests["vae_encoder"], requests["vae_decoder"], configs["vae"],
                                                    _Fallback("vae", fallback, notes)))
    # A pipeline built without its VAE assumed the usual factor of 8; take the real one from the VAE's config.
    from diffusers.image_processor import VaeImageProcessor

    factor = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    object.__setattr__(pipeline, "vae_scale_factor", factor)
    object.__setattr__(pipeline, "image_processor", VaeImageProcessor(vae_scale_factor=factor))


def take_notes(pipeline: Any) -> list[str]:
    """The one-line notes of components that fell back to PyTorch since the last call (none without OpenVINO)."""
    from img2img.models.ov_unet import OpenVinoUNet

    unet = getattr(pipeline, "unet", None)
    if not isinstance(unet, OpenVinoUNet):
        return []
    notes = list(unet.fallback.notes)
    unet.fallback.notes.clear()
    return notes


class _Fallback:
    """The PyTorch version of one component, loaded on first need: when OpenVINO fails to run it, or for a call
    with inputs that its graph does not take.

    After one failure the component stays in PyTorch (``failed``): a shape that failed once would fail again, and a
    sweep should not pay a failed compilation per cell. Calls with extra inputs go to PyTorch one by one; the
    engine has said so in a note before the run (``img2img.models.backends``).
    """

    def __init__(self, part: str, loader: TorchLoader, notes: list[str]) -> None:
        self.part, self._loader, self.notes = part, loader, notes
        self._module: torch.nn.Module | None = None
        self.failed = False

    @property
    def module(self) -> torch.nn.Module:
        if self._module is None:
            self._module = self._loader(self.part)
        return self._module

    def take_over(self, failure: OpenVinoFailure) -> None:
        self.failed = True
        self.notes.append(f"OpenVINO could not run the {self.part} ({failure}); it runs with PyTorch instead")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype


class _Turn:
    """Which component ran last, so that its intermediate buffers are freed when another one runs.

    Each compiled component keeps the buffers of its largest inference until told otherwise; without this the
    VAE encoder's, the UNet's and the VAE decoder's would all stay resident (about 1.3 GB at 512x512).
    """

    def __init__(self) -> None:
        self.last: Any = None

    def take(self, compiled: Any) -> None:
        if self.last is not None and self.last is not compiled:
            self.last.release_memory()
            pagecache.trim_heap()
        self.last = compiled

    def forget(self, compiled: Any) -> None:
        if self.last is compiled:
            self.last = None


class _Request:
    """One component, compiled for the input shapes of its calls.

    Static shapes measured faster and leaner than one dynamic-shape compilation (SD 1.5 at 512x512: UNet step
    4.34 s against 4.79 s, 0.23 GB less for its buffers; VAE decoder 0.13 GB less). A call with other shapes
    recompiles (about 4 s for the SD 1.5 UNet) after dropping the old compilation, so one repacked copy of the
    weights is resident at a time; compiling reads every weight once, with the IR file's mapped pages released.
    """

    def __init__(self, core: Any, xml: Path, options: dict[str, str], turn: _Turn,
                 edit: Callable[[Any], None] | None = None) -> None:
        self._core, self._xml, self._options, self._turn = core, xml, options, turn
        self._edit = edit  # changes the graph as read, before any weights patch (another output: ov_step_cache)
        self._weights = [xml.with_suffix(".bin")]
        self._shapes: list[tuple[int, ...]] | None = None
        self._compiled: Any = None
        self._request: Any = None
        self._patch: tuple[Any, Callable[[Any], None] | None] = (None, None)  # (key, what changes the weights)

    def set_patch(self, key: Any, patcher: Callable[[Any], None] | None) -> None:
        """Change the weights before compiling (LoRAs: ``img2img.models.ov_lora``); a new ``key`` recompiles on
        the next call, the same key changes nothing."""
        if key != self._patch[0]:
            self._patch = (key, patcher)
            self._turn.forget(self._compiled)
            self._compiled = self._request = self._shapes = None

    def __call__(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return self.outputs(arrays)[0]

    def outputs(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Every output of one inference on ``arrays``, in the graph's order."""
        shapes = [array.shape for array in arrays]
        try:
            if shapes != self._shapes:
                self._compile(shapes)
            self._turn.take(self._compiled)
            results = self._request.infer(arrays, share_inputs=True)
            outputs = [torch.from_numpy(np.array(results[port])) for port in self._compiled.outputs]
        except RuntimeError as exc:  # OpenVINO reports shape inference and compilation failures this way
            self.drop()
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OpenVinoFailure(f"{self._xml.stem} at input shapes {shapes}: {detail[:160]}") from exc
        pagecache.release(self._weights)  # in case a first inference read a few weights again
        return outputs

    def release_buffers(self) -> None:
        """Free the intermediate buffers of the last inference (the weights stay compiled)."""
        if self._compiled is not None:
            self._compiled.release_memory()
            pagecache.trim_heap()

    def drop(self) -> None:
        """Free the compiled graph (its repacked weights); the next call compiles again."""
        self._turn.forget(self._compiled)
        self._compiled = self._request = self._shapes = None

    def _compile(self, shapes: list[tuple[int, ...]]) -> None:
        self._turn.forget(self._compiled)
        self._compiled = self._request = self._shapes = None  # the old weights go before the new ones come
        pagecache.trim_heap()
        model = self._core.read_model(self._xml)
        if self._edit is not None:
            self._edit(model)
        if self._patch[1] is not None:
            self._patch[1](model)
        model.reshape({port: list(shape) for port, shape in zip(model.inputs, shapes, strict=True)})
        with pagecache.releasing(self._weights):
            self._compiled = self._core.compile_model(model, "CPU", self._options)
        self._request = self._compiled.create_infer_request()
        self._shapes = shapes


class OpenVinoVAE:
    """Called like a diffusers AutoencoderKL: ``encode(x).latent_dist`` and ``decode(z, return_dict=False)``."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, encoder: _Request, decoder: _Request, config: dict[str, Any], fallback: _Fallback) -> None:
        self.config = _Config(config)
        self._encoder, self._decoder, self.fallback = encoder, decoder, fallback

    def encode(self, pixels: torch.Tensor, return_dict: bool = True) -> Any:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        moments = self._run(self._encoder, pixels, lambda vae, x: vae.encode(x).latent_dist.parameters)
        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(moments))

    def release_encoder(self) -> None:
        """Free the compiled encoder once a source is encoded: it would stay resident through the denoising and the
        decoding, where the peak is (SD 1.5: 0.14 GB in float32); compiling it again takes about 0.2 s."""
        self._encoder.drop()

    def release_decoder_buffers(self) -> None:
        """Free the decoder's buffers (SD 1.5 at 512x512: 0.58 GB in float32) before the text encoder runs: it is not
        OpenVINO's, so the next request's text encoding would otherwise peak with them still held."""
        self._decoder.release_buffers()

    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> tuple[torch.Tensor]:
        return (self._run(self._decoder, latents, lambda vae, z: vae.decode(z, return_dict=False)[0]),)

    def _run(self, request: _Request, tensor: torch.Tensor, in_torch: Callable[[Any, torch.Tensor], torch.Tensor]
             ) -> torch.Tensor:
        if not self.fallback.failed:
            try:
                return request([_array(tensor)])
            except OpenVinoFailure as failure:
                self.fallback.take_over(failure)
        with torch.no_grad():
            return in_torch(self.fallback.module, tensor.to(self.fallback.dtype)).float()


class _Config(dict):
    """A config dict that also reads as attributes, as diffusers' FrozenDict does."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def _int8_weights(model: Any) -> Any:
    """The model with its matrix multiply weights stored in 8 bits (NNCF, data-free, per output channel).

    Convolutions keep their precision: OpenVINO's CPU plugin unpacks 8-bit convolution weights when it compiles,
    so they would cost memory instead of saving it, while its matrix multiplies read 8-bit weights as they run.
    """
    import nncf  # an optional dependency; choose_placement checked that it is installed

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                 ignored_scope=nncf.IgnoredScope(types=["Convolution"], validate=False))


EXAMPLE_LATENT_SIDE = 15  # odd: see _example_shape


def _example_shape(shape: tuple[int, ...], pixels_per_latent: int) -> tuple[int, ...]:
    """A concrete example for a shape with dynamic (-1) dimensions: batch 2, and 15 latent pixels a side.

    The side must be odd. diffusers' UNet passes each upsampler the size of its skip connection only when the
    latent size is not a multiple of 2^upsamplers, and tracing keeps the branch the example took: traced at a
    multiple, the graph doubles sizes blindly and its concatenations fail at every other size (a 448x296 photo's
    56x37 latent in SD 1.5). Traced at an odd size, upsampling follows the skip connections, which is the same
    nearest-neighbour result at every size, so one graph serves them all.
    """
    sides = iter((2, EXAMPLE_LATENT_SIDE * pixels_per_latent, EXAMPLE_LATENT_SIDE * pixels_per_latent))
    return tuple(next(sides) if side == -1 else 77 if side == TOKENS else side for side in shape)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).contiguous().numpy()


def _export_modules(component: str, module: Any) -> dict[str, tuple[torch.nn.Module, list[tuple[int, ...]], int]]:
    """The graphs to convert from a UNet or a VAE, their input shapes (-1: dynamic batch, height and width;
    TOKENS: dynamic prompt length) and pixels per latent pixel of their spatial inputs (1 for latents)."""
    if component == "unet":
        xl = module.config.addition_embed_type == "text_time"
        conditioned = module.config.time_cond_proj_dim is not None
        return {"unet": (_UNetExport(module, xl, conditioned), unet_input_shapes(module), 1)}
    factor = 2 ** (len(module.config.block_out_channels) - 1)
    return {
        "vae_encoder": (_EncoderExport(module), [(-1, 3, -1, -1)], factor),
        "vae_decoder": (_DecoderExport(module), [(-1, module.config.latent_channels, -1, -1)], 1),
    }


def unet_extras(config: dict[str, Any]) -> tuple[bool, bool]:
    """Whether a UNet takes SDXL's pooled text and size ids, and whether it takes LCM's guidance embedding."""
    return config.get("addition_embed_type") == "text_time", config.get("time_cond_proj_dim") is not None


def unet_input_shapes(unet: Any) -> list[tuple[int, ...]]:
    """The UNet graph's inputs: sample, timestep, text, SDXL's pooled text and size ids, LCM's guidance."""
    text = (-1, TOKENS, unet.config.cross_attention_dim)
    shapes: list[tuple[int, ...]] = [(-1, unet.config.in_channels, -1, -1), (), text]
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        shapes += [(-1, pooled), (-1, 6)]
    if unet.config.time_cond_proj_dim is not None:
        shapes.append((-1, unet.config.time_cond_proj_dim))
    return shapes


class _UNetExport(torch.nn.Module):
    def __init__(self, unet: Any, xl: bool, conditioned: bool) -> None:
        super().__init__()
        self.unet, self.xl, self.conditioned = unet, xl, conditioned

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, *extra: torch.Tensor) -> Any:
        options: dict[str, Any] = {}
        if self.xl:
            options["added_cond_kwargs"] = {"text_embeds": extra[0], "time_ids": extra[1]}
        if self.conditioned:
            options["timestep_cond"] = extra[-1]
        return self.unet(sample, timestep, encoder_hidden_states=text, return_dict=False, **options)[0]


class _EncoderExport(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels).latent_dist.parameters


class _DecoderExport(torch.nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]
