"""Image to prompt with models the user brings: a tiny random BLIP or GIT captioner and a tiny CLIP ranking
clip-interrogator's word lists, through the library, the command line and a real server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from img2img import Engine, InvalidArgument
from img2img.models.captioners import word_list
from img2img.models.paths import cache_dir
from test_cli import assert_one_line_error, img2img
from tiny_describers import build_tiny_blip, build_tiny_clip, build_tiny_git


@pytest.fixture(autouse=True)
def fewer_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first 300 terms of each list: the tiny CLIP ranks them in a moment (the full lists take seconds)."""
    monkeypatch.setenv("IMG2IMG_CLIP_TERMS", "300")


@pytest.fixture(scope="module")
def describers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("describers")
    return {"blip": build_tiny_blip(root / "tiny-blip"), "git": build_tiny_git(root / "tiny-git"),
            "clip": build_tiny_clip(root / "tiny-clip")}


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee()).resize((150, 100), Image.LANCZOS)


def test_a_caption_and_ranked_words_lead_the_prompt(describers, coffee) -> None:
    assert word_list("mediums"), "clip-interrogator's lists are installed (scripts/setup.sh)"
    engine = Engine(device="cpu", dtype="float32")
    described = engine.describe(coffee, "sd", "restyle", str(describers["blip"]), str(describers["clip"]))
    assert described.caption and described.prompt.startswith(described.caption + ", (")
    ranked = described.ranked or {}
    assert set(ranked) == {"mediums", "movements", "artists", "flavors"} and len(ranked["flavors"]) == 3
    medium = ranked["mediums"][0][0]
    assert f"({medium}:1.1)" in described.prompt and f"by {ranked['artists'][0][0]}" in described.prompt
    assert "palette:1.2)" in described.prompt, "the measurements follow"
    found = described.to_dict()
    assert found["captioned"] is True and "not_measured" not in found
    assert found["models"] == {"captioner": "tiny-blip", "clip": "tiny-clip"}
    assert list((cache_dir() / "clip-lists").glob("*-mediums-*.npy")), "the lists' embeddings are kept"
    again = engine.describe(coffee, "sd", "restyle", str(describers["blip"]), str(describers["clip"]))
    assert again.prompt == described.prompt, "greedy decoding and a fixed ranking: the same words each time"
    git = engine.describe(coffee, "plain", "restyle", str(describers["git"]), "none")
    assert git.caption and git.prompt.startswith(git.caption[0].upper()) and git.ranked is None


def test_folders_that_are_not_describers_are_refused(describers, tiny_sd) -> None:
    engine = Engine(device="cpu")
    picture = Image.new("RGB", (64, 64), "red")
    with pytest.raises(InvalidArgument, match=r"captioner should be a BLIP, BLIP-2, GIT or Florence-2 folder .*"
                                              r"a clip model"):
        engine.describe(picture, captioner=str(describers["clip"]))
    with pytest.raises(InvalidArgument, match=r"clip should be a CLIP folder .*no config.json with a model_type"):
        engine.describe(picture, clip=str(tiny_sd))
    with pytest.raises(InvalidArgument, match=r"captioner should be a captioner registered .* but got 'nobody'"):
        engine.describe(picture, captioner="nobody")


@pytest.mark.slow  # four subprocesses that load transformers; CI runs it with -m slow
def test_the_command_line_uses_registered_describers(describers, tmp_path) -> None:
    path = tmp_path / "coffee.png"
    Image.new("RGB", (90, 60), (120, 70, 40)).save(path)
    given = img2img("describe", str(path), "--captioner", str(describers["blip"]), "--clip", str(describers["clip"]),
                    "--json")
    assert given.returncode == 0, given.stderr
    found = json.loads(given.stdout)
    assert found["captioned"] and found["caption"] and found["ranked"]["mediums"][0]["term"]
    assert img2img("models", "add", "blip", str(describers["blip"])).returncode == 0
    registered = img2img("describe", str(path))
    assert registered.returncode == 0 and "caption (blip): " in registered.stdout, registered.stdout
    measured = img2img("describe", str(path), "--captioner", "none")
    assert "no captioning model was used" in measured.stdout
    assert_one_line_error(img2img("describe", str(path), "--clip", str(tmp_path)), "--clip should be a CLIP folder")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, describers: dict[str, Path]):  # type: ignore[no-untyped-def]
    from img2img.models.registry import ModelEntry, ModelRegistry
    from server_process import ServerProcess

    config = tmp_path_factory.mktemp("describers-config")
    ModelRegistry(config).add(ModelEntry("tiny", str(tiny_sd)))
    ModelRegistry(config).add_addon("tiny-blip", describers["blip"], "captioner")
    ModelRegistry(config).add_addon("tiny-clip", describers["clip"], "clip")
    process = ServerProcess(tmp_path_factory.mktemp("describers-data"), config)
    process.start()
    yield process
    process.stop()


def test_the_server_describes_with_its_registered_models(server, coffee) -> None:
    from server_process import b64

    buffer = io.BytesIO()
    coffee.save(buffer, format="PNG")
    with server.client() as client:
        native = client.post("/v1/describe", files={"image": buffer.getvalue()})
        assert native.status_code == 200, native.text
        assert native.json()["captioned"] is True and native.json()["models"]["captioner"] == "tiny-blip"
        a1111 = client.post("/sdapi/v1/interrogate", json={"image": b64(buffer.getvalue()), "model": "clip"})
        assert a1111.status_code == 200 and a1111.json()["caption"] == native.json()["prompt"]
