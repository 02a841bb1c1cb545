"""CPU speed of img2img's engine against the stock diffusers img2img pipeline, measured in one run.

    .venv/bin/python bench/cpu_speed.py [--jobs sd15,turbo] [--repeats 3]

Full-size architectures with random weights (``bench/random_models.py``; speed does not depend on weight values).
Each (job, implementation) runs in its own process, so that peak resident memory is its own: one warm-up call,
then ``repeats`` timed calls. The last lines printed are one JSON object per job (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

JOBS: dict[str, dict[str, Any]] = {
    # The reference job: SD 1.5 at 512x512, strength 0.6, 20 steps (12 run), CFG 7.5.
    "sd15": {"model": "sd15", "side": 512, "strength": 0.6, "steps": 20, "cfg": 7.5, "sampler": "DPM++ 2M Karras"},
    # SD-Turbo class: the SD 2.1 architecture, 2 steps at strength 0.5 (1 runs), no CFG.
    "turbo": {"model": "sd21", "side": 512, "strength": 0.5, "steps": 2, "cfg": 0.0, "sampler": "Euler a"},
    # SDXL at 1024x1024, as sd15 otherwise; a call takes minutes, so one cold call each.
    "sdxl": {"model": "sdxl", "side": 1024, "strength": 0.6, "steps": 20, "cfg": 7.5, "sampler": "DPM++ 2M Karras",
             "impls": ("stock", "ours"), "warmup": False},
    # A 2048x2048 source at strength 0.3 with SD 1.5, for memory (tiled VAE): 4 steps so 1 runs, one cold call.
    "sd15-2048": {"model": "sd15", "side": 2048, "strength": 0.3, "steps": 4, "cfg": 7.5, "sampler": "DPM++ 2M Karras",
                  "impls": ("stock", "ours"), "warmup": False},
    # SD 3 Medium's architecture (without T5, for both) at 512x512, strength 0.6 of 10 steps (6 run), CFG 7; its
    # transformer calls take tens of seconds in fp32, so one cold call each.
    "sd3": {"model": "sd3", "side": 512, "strength": 0.6, "steps": 10, "cfg": 7.0, "sampler": "Euler",
            "impls": ("stock", "ours"), "warmup": False},
}
IMPLEMENTATIONS = ("stock", "ours", "ours-torch", "ours-fp32", "ours-f32", "ours-int8", "ours-cache3", "ours-taesd",
                   "ours-fast", "ours-cache3-int8", "ours-tome", "ours-tome-l2", "ours-tome-taesd")
# The opt-in fast modes: the defaults with these request fields, or these engine options ("taesd": the random
# tiny autoencoder that random_models.py builds; "fast": step caching and the tiny autoencoder together).
MODES: dict[str, dict[str, Any]] = {"ours-int8": {"quantize": "int8"}, "ours-cache3": {"cache_steps": 3},
                                    "ours-taesd": {"vae": "taesd"}, "ours-fast": {"cache_steps": 3, "vae": "taesd"},
                                    "ours-cache3-int8": {"cache_steps": 3, "quantize": "int8"},
                                    "ours-tome": {"merge_tokens": 0.5},
                                    "ours-tome-l2": {"merge_tokens": 0.5, "merge_levels": 2},
                                    "ours-tome-taesd": {"merge_tokens": 0.5, "vae": "taesd"}}
CONVERT_SIDE = 512  # a mode's first call, which converts its graphs, works at this size (at 2048 it would take minutes)
ENGINE_OPTIONS = ("quantize",)
SEED = 1234
PROMPT = "a red fox in the snow, oil painting"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="sd15,turbo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", help="the implementations besides stock and ours (comma-separated): "
                        "ours-torch, ours-fp32, ours-int8, ours-cache3, ours-taesd, ours-fast, ours-cache3-int8, "
                        "ours-tome, ours-tome-l2, ours-tome-taesd "
                        "[default: all]")
    parser.add_argument("--worker", nargs=2, metavar=("JOB", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.out)))
        return
    peaks = matmul_peaks()
    print(json.dumps({"cpu": cpu_features(), "matmul_peak_gflops": peaks}), flush=True)
    for job in args.jobs.split(","):
        build_model(JOBS[job]["model"])  # in its own process, so no worker's peak memory includes building it
        build_model("taesd")
        report = {"job": job, **JOBS[job], "cpu": cpu_features(), "matmul_peak_gflops": peaks, "flops": work_of(job)}
        outputs = {}
        chosen = JOBS[job].get("impls", IMPLEMENTATIONS)
        if args.impls:
            chosen = [impl for impl in IMPLEMENTATIONS if impl in {"stock", "ours", *args.impls.split(",")}]
        for impl in chosen:
            if impl.startswith("ours"):  # convert once, outside the measured one
                first = run_worker(job, impl, 0, Path(tempfile.mkdtemp()) / "x.npy")
                report[f"{impl}_first_load_s"] = first["load_s"]
                report[f"{impl}_first_load_peak_gb"] = first["peak_rss_gb"]
            repeats = 1 if impl == "ours-fp32" else args.repeats  # fp32 only gives the quality reference
            out = Path(tempfile.mkdtemp()) / f"{job}-{impl}.npy"
            report[impl] = run_worker(job, impl, repeats, out)
            outputs[impl] = np.load(out)
            print(json.dumps({job: {impl: report[impl]}}), flush=True)
        report["speedup_e2e"] = round(report["stock"]["e2e_s"] / report["ours"]["e2e_s"], 2)
        if "ours-torch" in report:
            report["speedup_e2e_torch_bf16"] = round(report["stock"]["e2e_s"] / report["ours-torch"]["e2e_s"], 2)
        if "ours-fp32" in report:
            report["psnr_ours_vs_fp32_db"] = psnr(outputs["ours"], outputs["ours-fp32"])
            report["psnr_fp32_vs_stock_db"] = psnr(outputs["ours-fp32"], outputs["stock"])
        for impl in (impl for impl in MODES if impl in report):  # each mode against stock, the default and fp32
            mode = impl.removeprefix("ours-")
            report[f"speedup_e2e_{mode}"] = round(report["stock"]["e2e_s"] / report[impl]["e2e_s"], 2)
            report[f"speedup_{mode}_vs_ours"] = round(report["ours"]["e2e_s"] / report[impl]["e2e_s"], 2)
            report[f"psnr_{mode}_vs_ours_db"] = psnr(outputs[impl], outputs["ours"])
            if "ours-fp32" in report:
                report[f"psnr_{mode}_vs_fp32_db"] = psnr(outputs[impl], outputs["ours-fp32"])
        report["psnr_ours_vs_stock_db"] = psnr(outputs["ours"], outputs["stock"])
        report["efficiency"] = efficiency(report)
        print(json.dumps(report), flush=True)


def build_model(name: str) -> None:
    script = Path(__file__).parent / "random_models.py"
    subprocess.run([sys.executable, str(script), name], check=True, stdout=subprocess.DEVNULL)


def run_worker(job: str, impl: str, repeats: int, out: Path, script: str = __file__) -> dict[str, Any]:
    """``script --worker JOB IMPL`` in its own process (so that its peak memory is its own); its last line."""
    command = [sys.executable, script, "--worker", job, impl, "--repeats", str(repeats), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{job}/{impl} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(job: str, impl: str, repeats: int, out: Path) -> dict[str, Any]:
    """Load, warm up, time ``repeats`` calls; report seconds, UNet step and VAE times and peak memory."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from random_models import random_model

    spec = JOBS[job]
    folder = random_model(spec["model"])
    source = demo_photo(spec["side"])
    started = time.perf_counter()
    run, pipeline, dtype = (stock_runner if impl == "stock" else ours_runner)(folder, spec, source, impl)
    load_s = time.perf_counter() - started
    timers = {"unet": Timer(), "encode": Timer(), "decode": Timer()}
    timers["unet"].wrap(getattr(pipeline, "unet", None) or pipeline.transformer, "forward")  # SD 3's denoiser
    timers["encode"].wrap(pipeline.vae, "encode")
    timers["decode"].wrap(pipeline.vae, "decode")
    if repeats == 0:  # only load (and convert, the first time); a mode's own graphs convert on its first call
        if impl in MODES:
            run(CONVERT_SIDE)
        np.save(out, np.zeros(1))
        return {"load_s": round(time.perf_counter() - started, 1),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if spec.get("warmup", True):
        run()
        for timer in timers.values():
            timer.seconds.clear()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        image = run()
        seconds.append(time.perf_counter() - started)
    np.save(out, np.asarray(image, dtype=np.uint8))
    image.save(out.with_suffix(".png"))  # to look at (seams)
    return {
        "e2e_s": round(statistics.median(seconds), 2), "e2e_all_s": [round(s, 2) for s in seconds],
        "load_s": round(load_s, 1), "unet_step_s": timers["unet"].median(),
        "unet_calls": len(timers["unet"].seconds) // repeats, "vae_encode_s": timers["encode"].per_call(repeats),
        "vae_decode_s": timers["decode"].per_call(repeats),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "dtype": dtype, "threads": torch.get_num_threads(),
    }


def stock_runner(folder: Path, spec: dict[str, Any], source: Any, impl: str) -> tuple[Any, Any, str]:
    """diffusers' own img2img pipeline in fp32, as a user would run it, with the same sampler as ours."""
    import diffusers
    import torch

    from img2img.engine.samplers import build_scheduler

    xl, sd3 = spec["model"] == "sdxl", spec["model"] == "sd3"
    pipeline_class = diffusers.StableDiffusionXLImg2ImgPipeline if xl else diffusers.StableDiffusion3Img2ImgPipeline \
        if sd3 else diffusers.StableDiffusionImg2ImgPipeline
    extra: dict[str, Any] = {"text_encoder_3": None, "tokenizer_3": None} if sd3 else {} if xl else {
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipeline = pipeline_class.from_pretrained(folder, torch_dtype=torch.float32, **extra)
    size = {"height": spec["side"], "width": spec["side"]} if sd3 else {}  # SD 3's default is its 1024
    pipeline.scheduler = build_scheduler(spec["sampler"], dict(pipeline.scheduler.config), SEED)
    pipeline.set_progress_bar_config(disable=True)

    def run() -> Any:
        return pipeline(prompt=PROMPT, image=source, strength=spec["strength"], guidance_scale=spec["cfg"],
                        num_inference_steps=spec["steps"], generator=torch.Generator().manual_seed(SEED),
                        **size).images[0]

    return run, pipeline, "float32"


def ours_runner(folder: Path, spec: dict[str, Any], source: Any, impl: str) -> tuple[Any, Any, str]:
    from img2img import Engine, GenerationRequest

    # ours: the defaults; ours-torch: the same dtype without OpenVINO; ours-fp32: the fp32 PyTorch reference;
    # ours-f32: the defaults as on a CPU without bf16 (OpenVINO computing in fp32, the path AVX2-only CPUs take);
    # a mode (MODES): the defaults with that opt-in.
    mode = dict(MODES.get(impl, {}))
    if mode.get("vae") == "taesd":
        sys.path.insert(0, str(Path(__file__).parent))
        from random_models import random_model

        mode["vae"] = str(random_model("taesd"))
    engine = Engine(device="cpu", dtype="float32" if impl in ("ours-fp32", "ours-f32") else "auto",
                    backend="torch" if impl in ("ours-torch", "ours-fp32") else "auto",
                    **{key: value for key, value in mode.items() if key in ENGINE_OPTIONS})
    loaded = engine.load(str(folder))
    request = GenerationRequest(source=source, prompt=PROMPT, strength=spec["strength"], guidance_scale=spec["cfg"],
                                steps=spec["steps"], sampler=spec["sampler"], seed=SEED, model=str(folder),
                                size=(spec["side"], spec["side"]),  # work at the source's size, as stock does
                                **{key: value for key, value in mode.items() if key not in ENGINE_OPTIONS})
    # The dtype the model computes in (OpenVINO's stand-ins take fp32 tensors but compute in the placement's dtype).
    def run(side: int | None = None) -> Any:
        """The request, or the same at another size (for a first call that converts a mode's graphs)."""
        at = request if side is None else replace(request, source=demo_photo(side), size=(side, side))
        return engine.generate(at).images[0]

    return run, loaded.pipeline, engine.placement.dtype_name


class Timer:
    """Times every call of a wrapped method."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = original(*args, **kwargs)
            self.seconds.append(time.perf_counter() - started)
            return result

        setattr(owner, name, timed)

    def median(self) -> float | None:
        return round(statistics.median(self.seconds), 3) if self.seconds else None

    def per_call(self, calls: int) -> float | None:
        """Seconds per generate call: all of its wrapped calls together (every tile of a tiled VAE)."""
        return round(sum(self.seconds) / calls, 3) if self.seconds else None


def demo_photo(side: int) -> Any:
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((side, side), Image.LANCZOS)


def matmul_peaks() -> dict[str, float]:
    """Best of several large matrix multiplies, in GFLOP/s (int8: GOP/s, int8 x int8 summed in int32, oneDNN's
    VNNI or AMX kernels where the CPU has them), per dtype, on this process's threads."""
    import torch

    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
        torch.mm(a, b)
        best = min(_timed(lambda a=a, b=b: torch.mm(a, b)) for _ in range(5))
        peaks[str(dtype).removeprefix("torch.")] = round(2 * 4096**3 / best / 1e9, 1)
    a8, b8 = (torch.randint(-128, 128, (4096, 4096), dtype=torch.int8) for _ in range(2))
    torch._int_mm(a8, b8)
    best = min(_timed(lambda: torch._int_mm(a8, b8)) for _ in range(5))
    peaks["int8"] = round(2 * 4096**3 / best / 1e9, 1)
    return peaks


# The instruction sets that decide which kernels run: /proc/cpuinfo's names.
CPU_FLAGS = ("avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_features() -> dict[str, Any]:
    """The CPU's model, its logical cores and which of CPU_FLAGS it has (Linux; empty elsewhere)."""
    import os

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cores": os.cpu_count()}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"model": model, "cores": os.cpu_count(), "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def work_of(job: str) -> dict[str, float]:
    """TFLOP of one UNet evaluation (at the job's CFG batch), the VAE encode and the VAE decode."""
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "flops.py"), job], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def efficiency(report: dict[str, Any]) -> dict[str, float | None]:
    """Achieved GFLOP/s of each part divided by the matmul peak of the dtype it ran in."""
    result: dict[str, float | None] = {}
    for impl in ("stock", "ours", "ours-torch", "ours-int8"):  # a mode that skips work has no per-call rate
        if impl not in report:
            continue
        peak = report["matmul_peak_gflops"]["bfloat16" if report[impl]["dtype"] == "bfloat16" else "float32"]
        for part, seconds_key in (("unet", "unet_step_s"), ("vae_encode", "vae_encode_s"),
                                  ("vae_decode", "vae_decode_s")):
            seconds = report[impl][seconds_key]
            flops = report["flops"][f"{part}_tflop"] * 1e12
            result[f"{impl}_{part}"] = round(flops / seconds / 1e9 / peak, 3) if seconds else None
    return result


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def _timed(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
