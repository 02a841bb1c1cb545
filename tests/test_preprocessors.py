"""Control-map preprocessors on a real photo: golden statistics and the property each map must have, the engine
using one, and ``img2img preprocess``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data

from img2img import InvalidArgument
from img2img.engine.preprocessors import PREPROCESSORS, preprocess
from test_cli import assert_one_line_error, img2img

# Mean and standard deviation of each map of scikit-image's coffee at 300x200 (seed 3), measured once.
GOLDEN = {"none": (98.62, 73.55), "canny": (25.26, 76.18), "lineart": (19.54, 38.24), "softedge": (52.16, 51.58),
          "scribble": (193.06, 109.35), "tile": (98.63, 71.48), "shuffle": (88.94, 76.39),
          "recolor": (113.36, 58.65), "invert": (156.38, 73.55)}
DEPTH_GOLDEN = (60.10, 46.13)


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(data.coffee()).resize((300, 200), Image.LANCZOS)


@pytest.mark.parametrize("name", [name for name, entry in PREPROCESSORS.items()
                                  if not entry.needs_mask and entry.model_kind is None])
def test_each_map_matches_its_golden_statistics(name, coffee) -> None:
    pixels = np.asarray(preprocess(name, coffee, seed=3), dtype=float)
    assert pixels.shape == (200, 300, 3)
    mean, std = GOLDEN[name]
    assert abs(pixels.mean() - mean) < 2 and abs(pixels.std() - std) < 2, (pixels.mean(), pixels.std())


def test_each_map_has_its_property(coffee) -> None:
    source = np.asarray(coffee, dtype=int)
    canny = np.asarray(preprocess("canny", coffee))
    assert set(np.unique(canny)) == {0, 255}
    assert np.array_equal(np.asarray(preprocess("invert", coffee), dtype=int), 255 - source)
    recolor = np.asarray(preprocess("recolor", coffee), dtype=int)
    assert np.array_equal(recolor[..., 0], recolor[..., 2])
    tile = np.asarray(preprocess("tile", coffee), dtype=float)
    assert np.abs(np.diff(tile, axis=1)).mean() < 0.5 * np.abs(np.diff(source, axis=1)).mean()  # detail removed
    first, again = (np.asarray(preprocess("shuffle", coffee, seed=5)) for _ in range(2))
    assert np.array_equal(first, again) and not np.array_equal(first, np.asarray(preprocess("shuffle", coffee)))
    drawing = Image.new("RGB", (100, 100), "white")
    ImageDraw.Draw(drawing).line((10, 10, 90, 90), fill="black", width=4)
    scribble = np.asarray(preprocess("scribble", drawing))
    assert scribble[50, 50].tolist() == [255, 255, 255] and scribble[10, 90].tolist() == [0, 0, 0]
    with pytest.raises(InvalidArgument, match="preprocessor should be one of none, canny, lineart"):
        preprocess("pose", coffee)
    with pytest.raises(InvalidArgument, match="threshold_a should be a low threshold"):
        preprocess("canny", coffee, 250, 100)


def test_preprocess_command(photo, tmp_path) -> None:
    listed = img2img("preprocess", "--list")
    assert listed.returncode == 0 and "canny" in listed.stdout and "approximates" in listed.stdout
    out = tmp_path / "edges.png"
    made = img2img("preprocess", "canny", str(photo), "-o", str(out), "--threshold-a", "50", "--threshold-b", "150")
    assert made.returncode == 0, made.stderr
    assert Image.open(out).size == Image.open(photo).size
    assert_one_line_error(img2img("preprocess", "pose", str(photo), "-o", str(tmp_path / "x.png")),
                          "preprocessor should be one of")


def test_depth_runs_the_registered_model(coffee, tmp_path) -> None:
    from img2img import Engine, ModelRegistry
    from tiny_control import build_tiny_depth

    engine = Engine(device="cpu", dtype="float32", backend="torch")
    with pytest.raises(InvalidArgument, match=r"preprocessor should be depth with a depth model registered"):
        engine.preprocess("depth", coffee)
    folder = build_tiny_depth(tmp_path / "depth-anything-tiny")
    added = img2img("models", "add", "depth", str(folder))
    assert added.returncode == 0 and "depth model" in added.stdout, added.stderr
    depth = np.asarray(Engine(device="cpu", dtype="float32", backend="torch", registry=ModelRegistry()).preprocess(
        "depth", coffee), dtype=float)
    assert depth.shape == (200, 300, 3) and depth.min() == 0 and depth.max() == 255  # the full range, near white
    assert np.array_equal(depth[..., 0], depth[..., 2])
    # Golden statistics of the tiny random model's map (seed 0), measured once.
    assert abs(depth.mean() - DEPTH_GOLDEN[0]) < 2 and abs(depth.std() - DEPTH_GOLDEN[1]) < 2, (depth.mean(),
                                                                                              depth.std())
    coffee.save(tmp_path / "coffee.png")
    out = tmp_path / "depth.png"
    made = img2img("preprocess", "depth", str(tmp_path / "coffee.png"), "-o", str(out))
    assert made.returncode == 0, made.stderr
    assert np.array_equal(np.asarray(Image.open(out), dtype=float), depth)
