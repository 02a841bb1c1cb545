"""Turn recognised model files into a loaded pipeline on a device, fully offline."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from img2img.errors import ModelError
from img2img.models import flow_files, mapped_weights, ov_runtime, pagecache
from img2img.models.detect import ModelFiles, file_shapes
from img2img.models.device import Placement
from img2img.models.families import Family
from img2img.models.paths import cache_dir
from img2img.models.vocab import write_tokenizer_files

CONFIG_SET_VERSION = "1"  # bump when a shipped config changes so prepared copies are rebuilt


@dataclass
class LoadedModel:
    """A pipeline's components on a device, with what we know about them."""

    name: str
    family: Family
    sha256: str
    pipeline: Any  # a diffusers StableDiffusion(XL|3)Img2ImgPipeline; its components are what the engine uses
    placement: Placement

    @property
    def short_hash(self) -> str:
        """A1111's "Model hash": the first 10 hex digits of the checkpoint's SHA-256."""
        return self.sha256[:10]

    @property
    def scheduler_config(self) -> dict[str, Any]:
        return dict(self.pipeline.scheduler.config)


def load_model(files: ModelFiles, placement: Placement, config_dir: Path | None = None, t5: bool = True
               ) -> LoadedModel:
    """Load ``files`` in ``placement``'s dtype onto its device.

    ``config_dir`` is a diffusers-format folder of component configs for a single-file checkpoint whose
    architecture differs from the family's standard one; by default the shipped config of the family is used.
    ``t5`` False leaves an SD 3.x model's T5 encoder out (zeros in its place, as diffusers runs it without).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # loading never reaches the network, whatever it is given
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    if files.family.flow and placement.backend == "openvino":
        placement = replace(placement, backend="torch")  # OpenVINO's graphs are traced from UNets only
    pipeline_class = _pipeline_class(files.family)
    sha256 = weights_sha256(files.path)
    options: dict[str, Any] = {"local_files_only": True}
    variant = ov_runtime.ir_variant(placement.dtype, placement.quantize)
    openvino_ready = placement.backend == "openvino" and ov_runtime.has_ir(sha256, variant)
    if placement.backend == "openvino" and not openvino_ready and files.layout == "diffusers" \
            and placement.quantize != "int8":  # converted first, from the UNet and then the VAE alone
        _convert(files, lambda part: _float_component(files, part), sha256, variant)
        openvino_ready = True
    if openvino_ready and files.layout == "diffusers":
        options |= {"unet": None, "vae": None}  # the compiled IR replaces them: never load them
    if files.family.base == "sd3" and files.layout == "diffusers" and not (t5 and _has_t5(files)):
        options |= {"text_encoder_3": None, "tokenizer_3": None}  # SD 3 runs without T5 (zeros in its place)
    if files.family.base in ("sd1", "sd2"):
        options |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        pipeline = _read_pipeline(pipeline_class, files, placement, config_dir, options, t5)
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as exc:
        raise ModelError(f"model {files.name} ({files.family.label}) could not be loaded from {files.path}: "
                         f"{str(exc).splitlines()[0]}") from exc
    if not files.family.flow and pipeline.scheduler.config.get("prediction_type") != files.family.prediction:
        pipeline.scheduler.register_to_config(prediction_type=files.family.prediction)
    pipeline.set_progress_bar_config(disable=True)
    for component in pipeline.components.values():  # diffusers leaves a single file's T5 in training mode, where
        if isinstance(component, torch.nn.Module):  # its dropout makes every prompt's encoding random
            component.eval()
    pipeline.to(placement.device)
    t5 = t5_encoder(pipeline)
    if placement.quantize == "int8" and t5 is not None:
        from img2img.models.text_int8 import quantize_linear_layers

        quantize_linear_layers(t5)  # SD 3's or Flux's T5 with 8-bit weights (--quantize int8)
    if placement.device == "cpu":  # resident only while they encode
        mapped_weights.map_weights(pipeline, cache_dir() / "tmp")
    if placement.backend == "openvino":
        if not openvino_ready:  # a single file, or int8, which calibrates on the pipeline's text encoders
            _convert(files, lambda part: getattr(pipeline, part), sha256, variant, pipeline)
        float_placement = replace(placement, dtype=torch.float32)
        ov_runtime.attach(pipeline, sha256, variant, _torch_loader(files, placement, config_dir),
                          lambda: _torch_loader(files, float_placement, config_dir)("unet"))
        gc.collect()  # the PyTorch UNet and VAE, if they were loaded, are garbage now
    elif placement.device == "cpu":
        # oneDNN's convolutions are fastest on NHWC tensors; the modules accept NCHW input either way.
        if getattr(pipeline, "unet", None) is not None:
            pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    return LoadedModel(
        name=files.name, family=files.family, sha256=sha256, pipeline=pipeline,
        placement=placement,
    )


def _convert(files: ModelFiles, components: Any, sha256: str, variant: str, pipeline: Any = None) -> None:
    try:
        ov_runtime.export_ir(components, sha256, variant, pipeline)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        raise ModelError(f"model {files.name} could not be converted for OpenVINO "
                         f"({(str(exc).splitlines() or [type(exc).__name__])[0]}); run it with --backend torch"
                         ) from exc


def _float_component(files: ModelFiles, part: str) -> torch.nn.Module:
    """A diffusers folder's UNet or VAE in float32, for converting it alone: fp16 or bf16 files are read as they
    are and converted while their mapped pages are given back (as ``_read_pipeline`` does for the pipeline)."""
    import diffusers

    component = diffusers.UNet2DConditionModel if part == "unet" else diffusers.AutoencoderKL
    stored = _stored_dtype(files) or torch.float32
    try:
        module = component.from_pretrained(str(files.path), subfolder=part, torch_dtype=stored,
                                           local_files_only=True, use_safetensors=None if files.pickled else True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model {files.name}: its {part} could not be loaded from {files.path}: "
                         f"{str(exc).splitlines()[0]}") from exc
    if stored != torch.float32:
        with pagecache.releasing(sorted((files.path / part).glob("*.safetensors")), unwritten=True):
            module.to(torch.float32)
    return module.eval()


def _read_pipeline(pipeline_class: Any, files: ModelFiles, placement: Placement, config_dir: Path | None,
                   options: dict[str, Any], t5: bool) -> Any:
    """The pipeline in ``placement``'s dtype. Files of another float dtype than a CPU placement's (fp16 files for
    float32 or bf16, float32 files for bf16) are read as they are, which maps them without copying, then each module
    is converted while the files' mapped pages are given back as they are read (``pagecache.releasing``): the peak
    is the converted model, not the model plus the files (SD 1.5's first float32 load: 5.56 GiB before). The
    conversion is the one diffusers' own load does (``Tensor.to``), so the weights are the same; fp16 placements
    read directly, as diffusers keeps some modules of some encoders in float32 there (T5's ``wo``)."""
    stored = _stored_dtype(files)
    if stored is None or stored == placement.dtype or placement.dtype not in (torch.float32, torch.bfloat16):
        return _read(pipeline_class, files, placement.dtype, config_dir, options, t5)
    pipeline = _read(pipeline_class, files, stored, config_dir, options, t5)
    with pagecache.releasing(_weight_files(files), unwritten=True):  # nothing writes to weights being converted
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                component.to(placement.dtype)
    return pipeline


def _read(pipeline_class: Any, files: ModelFiles, dtype: torch.dtype, config_dir: Path | None,
          options: dict[str, Any], t5: bool) -> Any:
    if files.layout == "diffusers":
        return pipeline_class.from_pretrained(str(files.path), dtype=dtype,
                                              use_safetensors=None if files.pickled else True, **options)
    if files.family.base == "flux":  # the transformer from the file, the rest from the user's FLUX.1 folder
        transformer = flow_files.flux_transformer(files, config_dir, dtype)
        pipeline = pipeline_class.from_pretrained(str(config_dir), transformer=transformer, dtype=dtype,
                                                  use_safetensors=True, **options)
        flow_files.match_flux_schedule(pipeline.scheduler, schnell=files.family.distillation is not None)
        return pipeline
    configs = config_dir or prepared_config_dir(files.family)
    if files.family.base == "sd3":
        options = options | flow_files.sd3_components(files, file_shapes(files.path), configs,
                                                      config_dir is not None, t5, dtype)
    return pipeline_class.from_single_file(str(files.path), config=str(configs), torch_dtype=dtype, **options)


def t5_encoder(pipeline: Any) -> Any:
    """The pipeline's T5 encoder (SD 3's third text encoder, Flux's second), or None."""
    for name in ("text_encoder_3", "text_encoder_2"):
        encoder = getattr(pipeline, name, None)
        if type(encoder).__name__ == "T5EncoderModel":
            return encoder
    return None


def _has_t5(files: ModelFiles) -> bool:
    """Whether an SD 3.x folder holds its T5 encoder (it may be left out: saved without it, or not downloaded)."""
    if files.layout != "diffusers":
        return False
    index = json.loads((files.path / "model_index.json").read_text())
    return index.get("text_encoder_3") not in (None, [None, None]) and (files.path / "text_encoder_3").is_dir()


def _weight_files(files: ModelFiles) -> list[Path]:
    return [files.path] if files.path.is_file() else sorted(files.path.glob("*/*.safetensors"))


STORED_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def _stored_dtype(files: ModelFiles) -> torch.dtype | None:
    """The one float dtype every weight file of the model stores (a folder's components, or the single file);
    None when unknown or mixed (pickles, unreadable files, a float32 VAE beside an fp16 UNet)."""
    from safetensors import safe_open

    if files.pickled:
        return None
    dtypes: set[torch.dtype | None] = set()
    for path in _weight_files(files):
        try:
            with safe_open(str(path), framework="pt") as handle:
                stored = {handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118
        except Exception:  # safetensors raises its own untyped errors: read the usual way
            return None
        dtypes |= {STORED_DTYPES.get(name) for name in stored if name.startswith(("F", "BF"))}  # integers aside
    return dtypes.pop() if len(dtypes) == 1 else None


def _torch_loader(files: ModelFiles, placement: Placement, config_dir: Path | None) -> ov_runtime.TorchLoader:
    """Loads one component ("unet" or "vae") in PyTorch, for the OpenVINO stand-ins' fallback."""

    def load(part: str) -> torch.nn.Module:
        import diffusers

        component = diffusers.UNet2DConditionModel if part == "unet" else diffusers.AutoencoderKL
        try:
            if files.layout == "diffusers":
                module = component.from_pretrained(str(files.path), subfolder=part, torch_dtype=placement.dtype,
                                                    local_files_only=True,
                                                    use_safetensors=None if files.pickled else True)
            else:
                configs = config_dir or prepared_config_dir(files.family)
                module = component.from_single_file(str(files.path), config=str(configs), subfolder=part,
                                                    torch_dtype=placement.dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"model {files.name}: its {part} could not be loaded with PyTorch after OpenVINO "
                             f"failed ({str(exc).splitlines()[0]})") from exc
        return module.to(placement.device, memory_format=torch.channels_last).eval()

    return load


def _pipeline_class(family: Family) -> Any:
    import diffusers

    if family.base == "sdxl":
        return diffusers.StableDiffusionXLImg2ImgPipeline
    if family.base == "sd3":
        return diffusers.StableDiffusion3Img2ImgPipeline
    if family.base == "flux":
        return diffusers.FluxKontextPipeline if family.edit else diffusers.FluxImg2ImgPipeline
    return diffusers.StableDiffusionImg2ImgPipeline


def prepared_config_dir(family: Family) -> Path:
    """The shipped configs of ``family`` plus generated tokenizer files, prepared once in the user cache."""
    variant = "-inpainting" if family.inpainting else "-edit" if family.edit else ""
    target = cache_dir() / "configs" / f"{family.config_name}{variant}-v{CONFIG_SET_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        shipped = resources.files("img2img.models") / "configs" / family.config_name
        with resources.as_file(shipped) as source:
            shutil.copytree(source, staging, dirs_exist_ok=True)
        for tokenizer in staging.glob("tokenizer*"):
            write_tokenizer_files(tokenizer)
        if family.unet_channels != 4:  # the same architecture with the mask and the masked source's latents, or
            unet_config = staging / "unet" / "config.json"  # the source's latents, as input beside its own
            config = json.loads(unet_config.read_text()) | {"in_channels": family.unet_channels}
            unet_config.write_text(json.dumps(config, indent=2))
        staging.rename(target)  # atomic: a reader sees a complete folder or none
    except FileExistsError:
        pass  # another process prepared it first
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def weights_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of a folder's weight files; cached by path, size and mtime."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")) \
        if path.is_dir() else [path]
    stamp = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    key = hashlib.sha256(stamp.encode()).hexdigest()
    cache_file = cache_dir() / "hashes" / key
    if cache_file.is_file():
        return cache_file.read_text().strip()
    digests = [_file_sha256(p) for p in files]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_name(f".{key}.{os.getpid()}")
    partial.write_text(digest)
    partial.replace(cache_file)  # atomic: a concurrent reader never sees half a digest
    return digest


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
