"""Tiny random-weight Stable Diffusion and SDXL pipelines, built in code with the real CLIP vocabulary.

Speed and correctness checks need real architectures, not real weights: these follow the shapes diffusers'
own fast tests use, small enough that a denoising step takes milliseconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from img2img.models.vocab import write_tokenizer_files

SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
             "clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "leading"}


def _tokenizer(pad: str):
    from transformers import CLIPTokenizer

    folder = Path(tempfile.mkdtemp(prefix="clip-vocab-"))
    write_tokenizer_files(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77, pad_token=pad)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "hidden_size": 32,
                             "intermediate_size": 37, "layer_norm_eps": 1e-5, "num_attention_heads": 4,
                             "num_hidden_layers": 5, "vocab_size": 49408, "hidden_act": "quick_gelu",
                             "projection_dim": 32, **extra})


def _vae(scaling_factor: float, blocks: int = 2):
    """A tiny VAE that halves the size (``blocks`` 2) or, as real ones do, divides it by 8 (``blocks`` 4)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 64] if blocks == 2 else [32] * blocks, in_channels=3,
                         out_channels=3, latent_channels=4, down_block_types=["DownEncoderBlock2D"] * blocks,
                         up_block_types=["UpDecoderBlock2D"] * blocks, sample_size=64, scaling_factor=scaling_factor)


def build_tiny_sd(folder: Path, scheduler_class: str = "PNDMScheduler", prediction: str = "epsilon",
                  inpainting: bool = False, vae_blocks: int = 2, attention_first: bool = False,
                  edit: bool = False) -> Path:
    """Save a tiny SD 1.x-shaped pipeline as a diffusers folder at ``folder`` (``inpainting``: a 9-channel UNet,
    saved as diffusers saves SD 1.5 inpainting; ``edit``: an 8-channel InstructPix2Pix one; ``vae_blocks`` 4:
    latents an eighth of the size, as real ones; ``attention_first``: the cross-attention block first, as in SD,
    where T2I-Adapter features fit)."""
    import diffusers
    from diffusers import (
        StableDiffusionInpaintPipeline,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    down, up = ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
                                in_channels=9 if inpainting else 8 if edit else 4,
                                out_channels=4, down_block_types=down[::-1] if attention_first else down,
                                up_block_types=up[::-1] if attention_first else up, cross_attention_dim=32)
    vae = _vae(0.18215, vae_blocks)
    text_encoder = CLIPTextModel(_text_config())
    scheduler = getattr(diffusers, scheduler_class).from_config(
        {**SCHEDULER, "prediction_type": prediction, "skip_prk_steps": True})
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionInstructPix2PixPipeline \
        if edit else StableDiffusionPipeline
    pipeline = pipeline_class(vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer("<|endoftext|>"),
                              unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                              requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


def build_tiny_sdxl(folder: Path, inpainting: bool = False) -> Path:
    """Save a tiny SDXL-shaped pipeline (two text encoders, size conditioning) at ``folder`` (``inpainting``: a
    9-channel UNet, as SDXL inpainting has)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
                                in_channels=9 if inpainting else 4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64)
    vae = _vae(0.13025)
    text_encoder = CLIPTextModel(_text_config())
    text_encoder_2 = CLIPTextModelWithProjection(_text_config())
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer("<|endoftext|>"), tokenizer_2=_tokenizer("!"),
        unet=unet, scheduler=EulerDiscreteScheduler.from_config(SCHEDULER), force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(folder)
    return folder


def build_full_depth(folder: Path, layout: str) -> Path:
    """A tiny pipeline with the real depth of ``layout`` ("sd1", "sd2" or "sdxl"): the VAE scales by 8 and the UNet
    has as many downsamplers as the real one (3 for SD 1.x/2.x, 2 for SDXL), so odd latent sizes occur at photo
    sizes as they do with full-size models. Channels stay tiny (groups of 8), so a step takes milliseconds."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 16, 16, 16], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        norm_num_groups=8, sample_size=64, scaling_factor=0.13025 if layout == "sdxl" else 0.18215)
    common = {"sample_size": 32, "in_channels": 4, "out_channels": 4, "norm_num_groups": 8, "layers_per_block": 1}
    if layout == "sdxl":
        unet = UNet2DConditionModel(
            block_out_channels=(16, 16, 32), attention_head_dim=(2, 4, 4), use_linear_projection=True,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 1, 2),
            projection_class_embeddings_input_dim=80, cross_attention_dim=64, **common)
        pipeline = diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=CLIPTextModel(_text_config()),
            text_encoder_2=CLIPTextModelWithProjection(_text_config()), tokenizer=_tokenizer("<|endoftext|>"),
            tokenizer_2=_tokenizer("!"), unet=unet, scheduler=diffusers.EulerDiscreteScheduler.from_config(SCHEDULER),
            force_zeros_for_empty_prompt=True)
    else:
        sd2 = layout == "sd2"
        unet = UNet2DConditionModel(
            block_out_channels=(16, 16, 32, 32), attention_head_dim=(2, 2, 4, 4) if sd2 else 4,
            use_linear_projection=sd2, cross_attention_dim=32,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **common)
        scheduler = diffusers.DDIMScheduler.from_config(
            {**SCHEDULER, "prediction_type": "v_prediction" if sd2 else "epsilon"})
        text = CLIPTextModel(_text_config(**({"hidden_act": "gelu"} if sd2 else {})))
        pipeline = diffusers.StableDiffusionPipeline(
            vae=vae, text_encoder=text, tokenizer=_tokenizer("!" if sd2 else "<|endoftext|>"), unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


def build_tiny_lora(model: Path, path: Path, layout: str = "kohya", seed: int = 1, rank: int = 4,
                    convolutions: bool = False) -> Path:
    """A random LoRA for a tiny model's attention projections (UNet and text encoders), saved as ``path``.

    ``kohya``: A1111's keys (``lora_unet_...``, ``lora_te_...`` with ``lora_down``/``lora_up`` and ``alpha``);
    ``diffusers``: diffusers' own (``unet.<module>.lora_A.weight``, ``text_encoder.<module>...``, no alpha).
    ``convolutions`` (kohya only): also the UNet's 3x3 ResNet convolutions, as a LoCon file has them.
    """
    import diffusers
    from safetensors.torch import save_file

    xl = (model / "text_encoder_2").is_dir()
    pipeline_class = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
    pipe = pipeline_class.from_pretrained(model, **extra)
    generator = torch.Generator().manual_seed(seed)
    parts = [("unet", "unet", ("to_q", "to_k", "to_v", "0")), ("text_encoder", "te1" if xl else "te", ("q_proj",
             "k_proj", "v_proj", "out_proj"))]
    if xl:
        parts.append(("text_encoder_2", "te2", ("q_proj", "k_proj", "v_proj", "out_proj")))
    tensors = {}
    for component, short, ends in parts:
        for name, module in getattr(pipe, component).named_modules():
            if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] not in ends:
                continue
            if ends[-1] == "0" and not name.endswith("to_out.0"):
                continue
            down = torch.randn(rank, module.in_features, generator=generator) * 0.2
            up = torch.randn(module.out_features, rank, generator=generator) * 0.2
            # Files in the wild name text encoder modules as transformers 4 did (text_model.encoder...).
            module_path = name if component == "unet" or name.startswith("text_model.") else f"text_model.{name}"
            if layout == "kohya":
                key = f"lora_{short}_{module_path.replace('.', '_')}"
                tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": torch.tensor(float(rank) / 2)}
            else:
                tensors |= {f"{component}.{module_path}.lora_A.weight": down,
                            f"{component}.{module_path}.lora_B.weight": up}
    if convolutions:
        for name, module in pipe.unet.named_modules():
            if isinstance(module, torch.nn.Conv2d) and "resnets" in name and name.endswith("conv1"):
                key = f"lora_unet_{name.replace('.', '_')}"
                tensors |= {
                    f"{key}.lora_down.weight": torch.randn(rank, module.in_channels, 3, 3, generator=generator) * 0.1,
                    f"{key}.lora_up.weight": torch.randn(module.out_channels, rank, 1, 1, generator=generator) * 0.1,
                    f"{key}.alpha": torch.tensor(float(rank))}
    save_file(tensors, str(path))
    return path


def reference_img2img(model: Path, sampler: str = "Euler"):  # type: ignore[no-untyped-def]
    """diffusers' own img2img pipeline for a tiny model folder, with one of our samplers and no progress bar."""
    import diffusers

    from img2img.engine.samplers import build_scheduler

    xl = (model / "text_encoder_2").is_dir()
    pipeline_class = diffusers.StableDiffusionXLImg2ImgPipeline if xl else diffusers.StableDiffusionImg2ImgPipeline
    extra = {} if xl else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = pipeline_class.from_pretrained(model, **extra)
    pipe.scheduler = build_scheduler(sampler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def square_photo(folder: Path, name: str = "astronaut") -> Path:
    """A scikit-image photo at 64x64, the working size itself, so that two pipelines see the same pixels."""
    from PIL import Image
    from skimage import data

    path = folder / f"{name}.png"
    Image.fromarray(getattr(data, name)()).resize((64, 64), Image.LANCZOS).save(path)
    return path


def build_tiny_sd_clear(folder: Path, edit: bool = False) -> Path:
    """``build_tiny_sd`` with a VAE whose weights pass the picture through (``clear_vae``) instead of random ones,
    so that what a tiny model keeps of a photo falls with the strength as a real model's does (its UNet is still
    random: the more noise it starts from, the less of the photo comes back)."""
    from diffusers import AutoencoderKL

    build_tiny_sd(folder, edit=edit)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    clear_vae(vae)
    vae.register_to_config(scaling_factor=1.0)  # its latents are the picture's own scale
    vae.save_pretrained(folder / "vae")
    return folder


@torch.no_grad()
def clear_vae(vae) -> None:  # type: ignore[no-untyped-def]
    """Weights that make a diffusers AutoencoderKL nearly an identity: every convolution passes its first channels
    through its centre tap, each resnet's and attention's own branch is zeroed (their skip connections remain), and
    the posterior's log-variance is -30. The group norms before the output convolutions stay: the picture comes
    back with each channel group normalized, its shapes and shading intact."""
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.weight.zero_()
            module.bias.zero_()
            centre = (module.kernel_size[0] // 2, module.kernel_size[1] // 2)
            for channel in range(min(module.in_channels, module.out_channels)):
                module.weight[channel, channel, centre[0], centre[1]] = 1.0
    for name, module in vae.named_modules():
        if name.endswith(".conv2") or name.endswith("to_out.0"):
            module.weight.zero_()
            module.bias.zero_()
    latent = vae.config.latent_channels
    vae.encoder.conv_out.weight[latent:] = 0.0
    vae.encoder.conv_out.bias[latent:] = -30.0


def _t5_tokenizer():
    """A T5 tokenizer made in code: a unigram vocabulary of the special tokens, single characters and a few
    words, each with and without the word-start mark (no download; real T5's has 32,000 pieces)."""
    from transformers import T5TokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?-'")
    words = ["a", "the", "of", "photo", "cat", "painting", "winter", "make", "it", "red", "astronaut", "in"]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{word}", -2.0) for word in words] + [("\u2581", -3.0)]
    pieces += [(letter, -5.0) for letter in letters] + [(f"\u2581{letter}", -4.0) for letter in letters]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def build_tiny_sd3(folder: Path, t5: bool = True, single_file: bool = False) -> Path:
    """Save a tiny Stable Diffusion 3-shaped pipeline as a diffusers folder at ``folder``: an MMDiT transformer with
    2x2 patches, CLIP-L and CLIP-G shaped encoders with projections, a T5 encoder unless ``t5`` is False, a
    16-channel VAE that divides the size by 8 with SD3's scaling and shift, and the flow-matching Euler scheduler
    with SD3's shift of 3. ``single_file``: shaped as Stability's single files can hold it, CLIP-G wider than CLIP-L
    (diffusers tells the two apart by width) and CLIP-L's projection the identity (the files have none)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip_g = _text_config(hidden_size=48, projection_dim=48) if single_file else _text_config()
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=96,
                                        caption_projection_dim=32, pos_embed_max_size=96,
                                        pooled_projection_dim=32 + clip_g.projection_dim)
    vae = AutoencoderKL(block_out_channels=[16, 16, 32, 32], in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        sample_size=64, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                        use_post_quant_conv=False, norm_num_groups=8)
    tokenizer_3 = text_encoder_3 = None
    if t5:
        tokenizer_3 = _t5_tokenizer()
        text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=96, d_kv=8, d_ff=37,
                                                 num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    clip_l = CLIPTextModelWithProjection(_text_config())
    if single_file:
        torch.nn.init.eye_(clip_l.text_projection.weight)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=clip_l, tokenizer=_tokenizer("<|endoftext|>"),
        text_encoder_2=CLIPTextModelWithProjection(clip_g), tokenizer_2=_tokenizer("!"),
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    pipeline.save_pretrained(folder)
    return folder


def build_tiny_flux(folder: Path, guidance: bool = True, kontext: bool = False) -> Path:
    """Save a tiny FLUX.1-shaped pipeline as a diffusers folder at ``folder``: a transformer with double- and
    single-stream blocks over 2x2 patches of a 16-channel latent, guidance as an input ([dev]; ``guidance`` False:
    [schnell]), CLIP-L and T5 encoders, a VAE that divides the size by 8 with Flux's scaling and shift, and the
    flow-matching Euler scheduler that shifts by image size as [dev]'s does (``kontext``: saved as a Kontext
    pipeline, the same architecture)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=96,
                                         pooled_projection_dim=32, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(block_out_channels=[16, 16, 32, 32], in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        sample_size=64, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False, norm_num_groups=8)
    tokenizer_2 = _t5_tokenizer()
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=96, d_kv=8, d_ff=37, num_layers=2,
                                             num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                             pad_token_id=0, eos_token_id=1))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0 if guidance else 1.0, use_dynamic_shifting=guidance,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    pipeline = (FluxKontextPipeline if kontext else FluxPipeline)(transformer=transformer, vae=vae, scheduler=scheduler,
                            text_encoder=CLIPTextModel(_text_config()), tokenizer=_tokenizer("<|endoftext|>"),
                            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
    pipeline.save_pretrained(folder)
    return folder
