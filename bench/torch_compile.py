"""torch.compile on the SD 1.5 UNet against eager PyTorch and OpenVINO, measured in one run.

    .venv/bin/python bench/torch_compile.py [--variants eager,freezing,max-autotune,openvino] [--repeats 3]

One UNet call at 512x512 with CFG (batch 2), in bf16 where the CPU has it (else fp32), channels-last, random
weights (``bench/random_models.py``). Each variant runs in its own process: ``eager`` (what ``--backend torch``
runs), ``default`` (``torch.compile`` with inductor's defaults), ``freezing`` (inductor with
``freezing=True``: weights folded in as constants, oneDNN's prepacked layouts), ``max-autotune`` (freezing and
``mode="max-autotune"``, which also tries inductor's C++ GEMM templates) and ``openvino`` (our default CPU path).
It prints one JSON line per variant, then one object with every variant's seconds per step and its ratio to eager.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ("eager", "default", "freezing", "max-autotune", "openvino")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="eager,freezing,max-autotune,openvino")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats)))
        return
    subprocess.run([sys.executable, str(Path(__file__).parent / "random_models.py"), "sd15"], check=True,
                   stdout=subprocess.DEVNULL)  # built once, in its own process
    results: dict[str, Any] = {}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants should name some of {', '.join(VARIANTS)}, but got {variant!r}")
        command = [sys.executable, __file__, "--worker", variant, "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            results[variant] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        else:
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({variant: results[variant]}), flush=True)
    eager = results.get("eager", {}).get("step_s")
    summary = {name: {**result, "vs_eager": round(eager / result["step_s"], 2) if eager and "step_s" in result
                      else None} for name, result in results.items()}
    print(json.dumps({"unet_step_sd15_512_cfg": summary}))


def worker(variant: str, repeats: int) -> dict[str, Any]:
    import torch

    from img2img.models.device import choose_placement

    sys.path.insert(0, str(Path(__file__).parent))
    from random_models import random_model

    folder = random_model("sd15")
    dtype = choose_placement("cpu", "auto", "torch").dtype
    if variant == "openvino":
        unet = _openvino_unet(folder)
    else:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype).eval()
        unet.to(memory_format=torch.channels_last)
    sample = torch.randn(2, 4, 64, 64, dtype=dtype).to(memory_format=torch.channels_last)
    text = torch.randn(2, 77, 768, dtype=dtype)
    timestep = torch.tensor(500)
    model: Any = unet
    if variant in ("default", "freezing", "max-autotune"):
        import torch._inductor.config as inductor

        inductor.freezing = variant != "default"
        model = torch.compile(unet, mode="max-autotune" if variant == "max-autotune" else None)

    def step() -> Any:
        with torch.inference_mode():
            return model(sample, timestep, encoder_hidden_states=text, return_dict=False)[0]

    started = time.perf_counter()
    step()  # compiles, for the compiled variants
    first_s = time.perf_counter() - started
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return {"step_s": round(statistics.median(seconds), 3), "all_s": [round(s, 3) for s in seconds],
            "first_call_s": round(first_s, 1), "dtype": str(dtype).removeprefix("torch.")}


def _openvino_unet(folder: Path) -> Any:
    from img2img import Engine

    return Engine(device="cpu", backend="openvino").load(str(folder)).pipeline.unet


if __name__ == "__main__":
    main()
