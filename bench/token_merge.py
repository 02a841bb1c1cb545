"""Token merging (``merge_tokens``) on one SD 1.5 UNet call at large sizes, against the same call without it.

    .venv/bin/python bench/token_merge.py [--sides 512,1024] [--ratios 0,0.5] [--repeats 2] [--backend torch]

Full SD 1.5 UNet with random weights (``bench/random_models.py``), batch 2 (CFG), as the engine runs it: with
``--backend torch`` in the dtype it picks (bf16 where the CPU has it), channels-last; with ``--backend openvino``
its OpenVINO stand-in (the model's UNet graph, or the graph that merges, converted on the first merged call). Each
(side, ratio) runs in its own process: one warm-up call, then the best of ``repeats``. Prints one JSON line per
case, then ``{"unet_call": {side: {ratio: {...}}}}`` with each ratio's speed-up over ratio 0 at that side and the
output's PSNR against it (same inputs).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="512,1024")
    parser.add_argument("--ratios", default="0,0.5")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", choices=("torch", "openvino"), default="torch")
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "RATIO", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), float(args.worker[1]), args.repeats, Path(args.worker[2]),
                                args.backend)))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from random_models import random_model

    random_model("sd15")
    report: dict[str, dict[str, Any]] = {}
    for side in (int(value) for value in args.sides.split(",")):
        outputs, cases = {}, {}
        for ratio in (float(value) for value in args.ratios.split(",")):
            out = Path(tempfile.mkdtemp()) / "out.npy"
            command = [sys.executable, __file__, "--worker", str(side), str(ratio), str(out), "--repeats",
                       str(args.repeats), "--backend", args.backend]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            cases[ratio] = json.loads(done.stdout.strip().splitlines()[-1])
            outputs[ratio] = np.load(out)
            print(json.dumps({side: {ratio: cases[ratio]}}), flush=True)
        base = cases.get(0.0)
        for ratio, case in cases.items():
            if base is not None and ratio:
                case["speedup"] = round(base["call_s"] / case["call_s"], 2)
                case["psnr_vs_unmerged_db"] = psnr(outputs[ratio], outputs[0.0])
        report[str(side)] = {str(ratio): case for ratio, case in cases.items()}
    print(json.dumps({"unet_call": report}))


def worker(side: int, ratio: float, repeats: int, out: Path, backend: str) -> dict[str, Any]:
    import contextlib

    import torch

    from img2img.engine.diffusion import token_merging

    sys.path.insert(0, str(Path(__file__).parent))
    from random_models import random_model

    unet, dtype = load_unet(random_model("sd15"), backend)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, side // 8, side // 8, generator=generator).to(dtype)
    text = torch.randn(2, 77, 768, generator=generator).to(dtype)
    merging = token_merging(unet, ratio) if ratio else contextlib.nullcontext()
    seconds = []
    with torch.inference_mode(), merging:
        for _ in range(repeats + 1):
            started = time.perf_counter()
            output = unet(sample, torch.tensor(500.0), encoder_hidden_states=text, return_dict=False)[0]
            seconds.append(time.perf_counter() - started)
    np.save(out, output.float().numpy())
    return {"call_s": round(min(seconds[1:]), 2), "first_call_s": round(seconds[0], 2), "dtype": str(dtype),
            "backend": backend, "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def load_unet(folder: Path, backend: str) -> tuple[Any, Any]:
    """The UNet as the engine runs it on ``backend``, and the dtype of its inputs."""
    import torch

    if backend == "openvino":
        from img2img import Engine

        return Engine(device="cpu", backend="openvino").load(str(folder)).pipeline.unet, torch.float32
    from diffusers import UNet2DConditionModel

    from img2img.models.device import choose_placement

    dtype = choose_placement("cpu", "auto", "torch").dtype
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).eval()
    return unet.to(memory_format=torch.channels_last), dtype


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Of two UNet outputs, with the reference's range as the peak."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    peak = float(np.abs(b).max())
    return round(10 * np.log10(peak**2 / max(mse, 1e-20)), 1)


if __name__ == "__main__":
    main()
