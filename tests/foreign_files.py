"""Images as other generators write them, built in code from the formats' public descriptions.

Each builder returns the bytes of a small picture carrying one tool's parameters for the same settings, so a test
can check that every format reads back as the same prompt, seed, steps, CFG, sampler and strength.
"""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
from PIL import Image, PngImagePlugin

PROMPT, NEGATIVE, SEED, STEPS, CFG, DENOISE = "a lighthouse at dusk, oil painting", "blurry, text", 1234, 20, 6.5, 0.55
SIZE = (96, 64)


def _picture(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, SIZE, (40, 90, 160, 255) if mode == "RGBA" else (40, 90, 160))


def _png(texts: dict[str, str], image: Image.Image | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    (image or _picture()).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def a1111_text() -> str:
    return (f"{PROMPT}\nNegative prompt: {NEGATIVE}\nSteps: {STEPS}, Sampler: DPM++ 2M, Schedule type: Karras, "
            f"CFG scale: {CFG}, Seed: {SEED}, Size: 96x64, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
            f"Denoising strength: {DENOISE}, Version: v1.10.1")


def a1111_png() -> bytes:
    return _png({"parameters": a1111_text()})


def a1111_jpeg() -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + a1111_text().encode("utf-16-be")
    buffer = io.BytesIO()
    _picture().save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def a1111_stealth() -> bytes:
    """A1111's "stealth" PNG info: 'stealth_pngcomp', a 32-bit bit count and the gzipped text, one bit per pixel
    in the alpha channel's lowest bit, column by column."""
    payload = gzip.compress(a1111_text().encode())
    data = b"stealth_pngcomp" + (len(payload) * 8).to_bytes(4, "big") + payload
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    width, height = 160, 120
    assert bits.size <= width * height
    alpha = np.full(width * height, 254, np.uint8)
    alpha[: bits.size] |= bits
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[..., :3] = (40, 90, 160)
    pixels[..., 3] = alpha.reshape(width, height).T  # column-major: down the first column first
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def comfyui_graph(truncate: bool = False) -> bytes:
    """A ComfyUI API graph with two KSamplers (a base pass and a second, lower-denoise pass)."""
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaper_8.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": DENOISE, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["11", 0]}},
        "12": {"class_type": "KSampler", "inputs": {
            "seed": SEED + 1, "steps": 10, "cfg": 4.0, "sampler_name": "euler_ancestral", "scheduler": "normal",
            "denoise": 0.3, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["3", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }
    text = json.dumps(prompt)
    kinds = {"clip": "CLIP", "model": "MODEL", "vae": "VAE", "positive": "CONDITIONING", "negative": "CONDITIONING",
             "latent_image": "LATENT", "samples": "LATENT", "pixels": "IMAGE", "images": "IMAGE"}
    links = [[number, int(value[0]), value[1], int(node), slot, kinds[name]]  # id, from, slot, to, slot, type
             for number, (node, slot, name, value) in enumerate(
                 ((node, slot, name, value) for node, spec in prompt.items()
                  for slot, (name, value) in enumerate(spec["inputs"].items()) if isinstance(value, list)), start=1)]
    workflow = json.dumps({"last_node_id": 12, "links": links,
                           "nodes": [{"id": int(k), "type": v["class_type"]} for k, v in prompt.items()]})
    return _png({"prompt": text[: len(text) // 2] if truncate else text, "workflow": workflow})


def invokeai_metadata() -> bytes:
    return _png({"invokeai_metadata": json.dumps({
        "generation_mode": "sd1_img2img", "positive_prompt": PROMPT, "negative_prompt": NEGATIVE, "width": 96,
        "height": 64, "seed": SEED, "rand_device": "cpu", "cfg_scale": CFG, "steps": STEPS, "scheduler": "dpmpp_2m_k",
        "strength": DENOISE,
        "model": {"model_name": "stable-diffusion-v1-5", "base_model": "sd-1", "model_type": "main"},
    })})


def invokeai_sd_metadata() -> bytes:
    return _png({"sd-metadata": json.dumps({
        "model": "stable diffusion", "model_weights": "stable-diffusion-1.5", "model_hash": "cc6cb27103",
        "app_id": "invoke-ai/InvokeAI", "app_version": "2.3.0",
        "image": {"prompt": [{"prompt": PROMPT, "weight": 1}], "steps": STEPS, "cfg_scale": CFG, "threshold": 0,
                  "perlin": 0, "height": 64, "width": 96, "seed": SEED, "seamless": False, "hires_fix": False,
                  "type": "img2img", "postprocessing": None, "sampler": "k_euler_a", "variations": [],
                  "strength": DENOISE},
    })})


def invokeai_dream() -> bytes:
    return _png({"Dream": f'"{PROMPT} [{NEGATIVE}]" -s {STEPS} -S {SEED} -W 96 -H 64 -C {CFG} -A k_lms'})


def fooocus() -> bytes:
    return _png({"parameters": json.dumps({
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "styles": "['Fooocus V2']", "performance": "Speed",
        "steps": STEPS, "resolution": "(96, 64)", "guidance_scale": CFG, "sharpness": 2.0,
        "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion",
        "base_model_hash": "aeb7e9e689", "refiner_model": "None", "sampler": "dpmpp_2m_sde_gpu",
        "scheduler": "karras", "seed": str(SEED), "version": "Fooocus v2.5.5",
    }), "fooocus_scheme": "fooocus"})


def novelai() -> bytes:
    return _png({"Title": "AI generated image", "Description": PROMPT, "Software": "NovelAI",
                 "Source": "Stable Diffusion XL C1E1DE52", "Comment": json.dumps({
                     "prompt": PROMPT, "steps": STEPS, "height": 64, "width": 96, "scale": CFG, "uncond_scale": 1.0,
                     "cfg_rescale": 0.0, "seed": SEED, "n_samples": 1, "strength": DENOISE, "noise": 0.0,
                     "sampler": "k_euler_ancestral", "uc": NEGATIVE})})


def text_after_idat() -> bytes:
    """A1111's text chunk placed after the image data (legal, and what some tools write)."""
    plain = _png({})
    end = plain.rindex(b"IEND") - 4
    body = b"parameters\0" + a1111_text().encode("latin-1")
    import struct
    import zlib

    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return plain[:end] + chunk + plain[end:]


FORMATS = {
    "a1111.png": (a1111_png, "AUTOMATIC1111"), "a1111.jpg": (a1111_jpeg, "AUTOMATIC1111"),
    "a1111-stealth.png": (a1111_stealth, "AUTOMATIC1111"), "comfyui.png": (comfyui_graph, "ComfyUI"),
    "invokeai.png": (invokeai_metadata, "InvokeAI"), "invokeai-sd-metadata.png": (invokeai_sd_metadata, "InvokeAI"),
    "invokeai-dream.png": (invokeai_dream, "InvokeAI"), "fooocus.png": (fooocus, "Fooocus"),
    "novelai.png": (novelai, "NovelAI"), "text-after-idat.png": (text_after_idat, "AUTOMATIC1111"),
}
