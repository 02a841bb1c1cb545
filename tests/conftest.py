"""Shared fixtures: tiny random-weight models built once per session, a real photo, and isolated user dirs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny_sd, build_tiny_sd3, build_tiny_sdxl


@pytest.fixture(autouse=True, scope="session")
def isolated_session(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The same isolation for session- and module-scoped fixtures, which are set up before function-scoped ones."""
    home = tmp_path_factory.mktemp("user")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMG2IMG_CONFIG_DIR", str(home / "config"))
        patch.setenv("IMG2IMG_CACHE_DIR", str(home / "cache"))
        patch.setenv("IMG2IMG_LORA_DIR", str(home / "loras"))
        patch.setenv("IMG2IMG_EMBEDDINGS_DIR", str(home / "embeddings"))
        patch.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("IMG2IMG_BACKEND", "torch")
        yield


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the real user's registry, caches or Hugging Face cache."""
    monkeypatch.setenv("IMG2IMG_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IMG2IMG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("IMG2IMG_LORA_DIR", str(tmp_path / "loras"))
    monkeypatch.setenv("IMG2IMG_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # PyTorch everywhere except in the tests of the OpenVINO path, which ask for it (converting takes seconds).
    monkeypatch.setenv("IMG2IMG_BACKEND", "torch")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd_inpainting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model with a 9-channel UNet, as SD 1.5 inpainting is."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-inpainting", inpainting=True)


@pytest.fixture(scope="session")
def tiny_sdxl_inpainting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SDXL model with a 9-channel UNet, as SDXL inpainting is."""
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl-inpainting", inpainting=True)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ControlNet for the tiny SD model, as a diffusers folder."""
    from tiny_control import build_tiny_controlnet

    return build_tiny_controlnet(tiny_sd, tmp_path_factory.mktemp("controlnets") / "tiny-controlnet")


@pytest.fixture(scope="session")
def tiny_ip_adapter(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random IP-Adapter (the plain variant) for the tiny SD model: its weight file, beside its
    image_encoder/ folder."""
    from tiny_ip_adapter import build_tiny_ip_adapter

    return build_tiny_ip_adapter(tiny_sd, tmp_path_factory.mktemp("ip-adapter"))


@pytest.fixture(scope="session")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's astronaut, a real photograph, shrunk to 64x48 so that tiny models run in milliseconds."""
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((64, 48), Image.LANCZOS).save(path)
    return path


@pytest.fixture(scope="session")
def other_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(data.coffee()).resize((64, 48), Image.LANCZOS).save(path)
    return path


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real local Ray cluster (two CPUs), started on first use and stopped at the end of the session."""
    from ray_cluster import local_cluster

    with local_cluster(tmp_path_factory.mktemp("ray") / "ray.log") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def tiny_sd_edit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD model with an 8-channel UNet, as InstructPix2Pix is."""
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-edit", edit=True)


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion 3-shaped model (MMDiT, three text encoders with T5, flow matching)."""
    return build_tiny_sd3(tmp_path_factory.mktemp("models") / "tiny-sd3")
