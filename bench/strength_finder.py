"""The strength finder's cost: a ``keep_structure`` request (previews, then the render) against one render.

    .venv/bin/python bench/strength_finder.py [--targets 0.02,0.7,0.99] [--side 512]

On the default path (``Engine()``: OpenVINO, bf16 where the CPU has it) with the full SD 1.5 architecture and random
weights (``bench/random_models.py``), in one process: a warm-up render, then one render at strength 0.6 and one
``keep_structure`` request per target, each timed. Random weights keep almost nothing of the source (about 0.1) at
any strength, so 0.02 is kept even at strength 1, which the search reaches in three previews (0.5, 0.75, 1) and then
renders in full: the most a search costs. The higher targets are out of reach below: previews down to strength 0.05,
whose render is cheap. Each search is followed by a plain render at the strength it chose. Prints one JSON line per
case (``seconds``: the whole request; ``search_s``: what the previews added; ``ratio_to_plain``: the request against
the plain render at its strength; ``ratio``: against the render at 0.6), then a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.02,0.7,0.99")
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from cpu_speed import PROMPT, SEED, cpu_features, demo_photo
    from img2img import Engine, GenerationRequest
    from random_models import random_model

    folder = str(random_model("sd15"))
    engine = Engine()
    engine.load(folder)
    base = GenerationRequest(source=demo_photo(args.side), prompt=PROMPT, strength=0.6, steps=20, guidance_scale=7.5,
                             sampler="DPM++ 2M Karras", seed=SEED, model=folder)
    engine.generate(base)  # warm-up: compilation for this size
    report: dict[str, Any] = {"cpu": cpu_features(), "side": args.side, "steps": 20}
    started = time.perf_counter()
    single = engine.generate(base)
    report["render_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps({"render": report["render_s"], "kept": single.record.retention}), flush=True)
    for target in (float(value) for value in args.targets.split(",")):
        started = time.perf_counter()
        aimed = engine.generate(GenerationRequest(**{**vars(base), "keep_structure": target}))
        seconds = time.perf_counter() - started
        assert aimed.search is not None
        started = time.perf_counter()  # the same render without the search: what the previews added
        engine.generate(GenerationRequest(**{**vars(base), "strength": aimed.search.strength}))
        plain = time.perf_counter() - started
        case = {"target": target, "seconds": round(seconds, 2), "plain_render_s": round(plain, 2),
                "search_s": round(seconds - plain, 2), "ratio_to_plain": round(seconds / plain, 2),
                "ratio": round(seconds / report["render_s"], 2),
                "previews": len(aimed.search.tries), "tries": aimed.search.tries, "strength": aimed.search.strength,
                "reachable": aimed.search.reachable}
        report[f"keep_structure_{target:g}"] = case
        print(json.dumps(case), flush=True)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
