"""Schemathesis hooks for the fuzz test: generated JSON job submissions carry a real picture, a built-in style, a
real recipe's name (when one was generated) and at most one retention target, so most are accepted and the stateful
phase follows the OpenAPI links to real jobs (the other fields stay as generated; the multipart and A1111 routes get
fully generated bodies)."""

from __future__ import annotations

import base64
import io
from functools import cache
from typing import Any

import schemathesis


@cache
def _picture() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 120, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    operation = context.operation
    if operation is None or operation.method.lower() != "post" or operation.path != "/v1/jobs":
        return body
    if not isinstance(body, dict):
        return body
    return {**body, "source": _picture(), "style_image": None, "params_from": None, "model": "builtin",
            "prompt": "fauve", "num_images": 1, "loops": 1, "size": None, "max_side": None, "background": "white",
            "sampler": None, "control": [], "ip_adapter": None,
            "image_prompts": [],  # control units and IP-Adapters need a diffusion model
            "recipe": "pop-art" if body.get("recipe") else None,  # a real recipe's name, or none
            "keep_colour": None, "keep_detail": None}  # one retention target at most (keep_structure as generated)
