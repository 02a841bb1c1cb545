"""Speed of the built-in style engine on a 1024x1024 photo, through the library as users call it.

    .venv/bin/python bench/styles.py [--repeats 5]

Prints one JSON object as its last line: median and min seconds per job (after one warm-up call that also loads
the networks), the working size, onnxruntime's thread count and the machine's core count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from skimage import data

    from img2img import Engine, GenerationRequest
    from img2img.imageio.source import read_source

    folder = Path(tempfile.mkdtemp())
    photo = folder / "astronaut-1024.png"
    Image.fromarray(data.astronaut()).resize((1024, 1024), Image.LANCZOS).save(photo)
    painting = folder / "coffee.png"
    Image.fromarray(data.coffee()).save(painting)
    source = read_source(photo).rgb  # decoded once: the figures are the engine's, not PNG decoding's

    engine = Engine()
    jobs = {
        "named_style": {"prompt": "starry-swirl", "strength": 1.0},
        "named_blend": {"prompt": "ink-drawing + frost-wash", "strength": 0.7},
        "style_image": {"prompt": "", "style_image": painting, "strength": 0.8},
    }
    results: dict[str, dict[str, float | str]] = {}
    for name, fields in jobs.items():
        request = GenerationRequest(source=source, seed=1, model="builtin", **fields)
        engine.generate(request)  # warm-up: loads and checks the networks
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = engine.generate(request)
            seconds.append(time.perf_counter() - started)
        results[name] = {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
                         "working_size": f"{result.record.working_width}x{result.record.working_height}"}
    from img2img.styles.catalog import style_names

    started = time.perf_counter()
    small = source.resize((320, 320))
    for style in style_names():
        engine.generate(GenerationRequest(source=small, prompt=style, strength=1.0, seed=1, model="builtin"))
    results["style_sheet_31"] = {"seconds": round(time.perf_counter() - started, 3), "cell": "320x320"}
    print(json.dumps({"bench": "styles", "photo": "1024x1024", "repeats": args.repeats, "cpus": os.cpu_count(),
                      "numpy": np.__version__, "jobs": results}))


if __name__ == "__main__":
    main()
