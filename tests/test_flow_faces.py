"""SD 3.x and FLUX.1 on the faces beyond the library: the A1111 API as its own client library calls it, sweeps,
and the command line's run, sweep and reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from img2img import Engine, GenerationRequest
from img2img.imageio.metadata import read_metadata
from img2img.sweep import make_axis
from server_process import ServerProcess, serving_tiny

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd3: Path, tiny_flux: Path):  # type: ignore[no-untyped-def]
    from img2img.models.registry import ModelEntry, ModelRegistry

    for process in serving_tiny(tmp_path_factory, tiny_sd3, "flow-faces"):
        ModelRegistry(process.config_dir).add(ModelEntry("flux", str(tiny_flux)))
        yield process


@pytest.mark.slow  # 18 s with its server; CI runs it with -m slow
def test_the_a1111_api_runs_sd3_and_flux(server: ServerProcess, photo: Path) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, steps=4)
    source = Image.open(photo)
    sd3 = api.img2img(images=[source], prompt="a watercolor", denoising_strength=0.6, seed=9, cfg_scale=5,
                      sampler_name="Heun", width=64, height=64)
    assert sd3.image.size == (64, 64) and "Model family: SD 3.x" in sd3.info["infotexts"][0]
    assert "Sampler: Heun" in sd3.info["infotexts"][0]
    flux = api.img2img(images=[source], prompt="a watercolor", denoising_strength=0.6, seed=9, cfg_scale=3.5,
                       sampler_name="Euler", width=64, height=64, override_settings={"sd_model_checkpoint": "flux"})
    assert "Model family: FLUX.1 [dev]" in flux.info["infotexts"][0] and flux.image.tobytes() != sd3.image.tobytes()
    with pytest.raises(RuntimeError, match=r"sampler should be one of Euler, DPM\+\+ 2M for FLUX\.1 \[dev\] models"):
        api.img2img(images=[source], prompt="x", sampler_name="Heun", width=64, height=64,
                    override_settings={"sd_model_checkpoint": "flux"})


def test_a_sweep_compares_flow_samplers_and_strengths(tiny_sd3: Path, photo: Path) -> None:
    engine = Engine(device="cpu")
    request = GenerationRequest(source=str(photo), prompt="a watercolor", steps=4, seed=3, model=str(tiny_sd3))
    swept = engine.sweep(request, [make_axis("sampler", ["Euler", "DPM++ 2M"]), make_axis("strength", [0.3, 0.8])])
    records = swept.result.records
    assert sorted((r.sampler, r.strength, r.steps_run) for r in records) == [
        ("DPM++ 2M", 0.3, 2), ("DPM++ 2M", 0.8, 4), ("Euler", 0.3, 2), ("Euler", 0.8, 4)]  # 1.2 and 3.2, rounded up
    assert len({image.tobytes() for image in swept.result.images}) == 4


@pytest.mark.slow  # 25 s; CI runs it with -m slow
def test_the_cli_runs_sweeps_and_reproduces_flux(tiny_flux: Path, photo: Path, tmp_path: Path) -> None:
    from test_cli import assert_one_line_error, img2img

    out = tmp_path / "flux.png"
    ran = img2img("run", str(photo), "a watercolor", "--model", str(tiny_flux), "--strength", "0.6", "--steps", "4",
                  "--seed", "4", "-o", str(out))
    assert ran.returncode == 0, ran.stderr
    assert json.loads(read_metadata(out).record or "{}")["model_family"] == "FLUX.1 [dev]"
    again = tmp_path / "again.png"
    reproduced = img2img("reproduce", str(out), "--source", str(photo), "--model", str(tiny_flux), "-o", str(again))
    assert reproduced.returncode == 0, reproduced.stderr
    assert Image.open(again).tobytes() == Image.open(out).tobytes()
    swept = img2img("sweep", str(photo), "a watercolor", "--model", str(tiny_flux), "--steps", "4",
                    "--cfg", "2,5", "--seeds", "4", "-o", str(tmp_path / "sweep"))
    assert swept.returncode == 0, swept.stderr
    assert_one_line_error(img2img("run", str(photo), "x", "--model", str(tiny_flux), "--cache-steps", "2"),
                          "--cache-steps should be 1 with FLUX.1 [dev] models")
