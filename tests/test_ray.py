"""Scale-out on Ray: a folder batch and a sweep spread over the actors of a real local cluster give the files a run
here gives; leases make a job end once; bad addresses are refused in one line; without --ray Ray is not imported.

On CPU the bytes depend on how many threads share a sum, so each comparison runs here with as many threads as
each Ray worker has (OMP_NUM_THREADS)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from img2img.cluster.parcel import Carried, pack, unpack
from img2img.cluster.pool import plan
from img2img.engine.control import ControlUnit
from img2img.engine.request import GenerationRequest
from img2img.errors import InvalidArgument
from img2img.jobs.request import JobRequest
from img2img.jobs.store import JobStore
from test_cli import assert_one_line_error, img2img


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Real photos at photo sizes, and one file that is not an image."""
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    folder = tmp_path / "in"
    folder.mkdir()
    photo.resize((130, 97)).save(folder / "astronaut.png")
    photo.resize((96, 64)).save(folder / "small.jpg")
    photo.crop((0, 0, 300, 200)).resize((72, 80)).save(folder / "crop.webp")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow
def test_batch_on_ray_writes_the_files_of_a_run_here(folder: Path, tmp_path: Path, tiny_sd: Path,
                                                       ray_cluster) -> None:  # type: ignore[no-untyped-def]
    common = ("batch", str(folder), "a watercolor", "--model", str(tiny_sd), "--seed", "5", "--steps", "3")
    here = img2img(*common, "-o", str(tmp_path / "here"), env={"OMP_NUM_THREADS": "1"})
    assert here.returncode == 1, here.stderr  # the broken file
    spread = img2img(*common, "-o", str(tmp_path / "ray"), "--ray", ray_cluster.address, "--cpus-per-worker", "1")
    assert spread.returncode == 1, spread.stderr
    assert "on 2 Ray workers (1 CPU core each)" in spread.stdout
    assert "done 3, skipped 0 (already there), failed 1" in spread.stdout
    assert f"failed broken.png: source should be a PNG, JPEG, WebP, BMP, TIFF or GIF image, but {folder}" in \
        spread.stdout.replace("\n", " ")
    assert f"{folder / 'small.jpg'} is 96x64" in spread.stderr + spread.stdout  # notes name the file here
    made = _files(tmp_path / "ray")
    assert sorted(made) == ["astronaut.png", "crop.png", "small.png"]
    assert made == _files(tmp_path / "here")  # names, pixels and metadata

    (tmp_path / "ray" / "small.png").unlink()  # resume: only the missing file runs
    again = img2img(*common, "-o", str(tmp_path / "ray"), "--ray", ray_cluster.address)
    assert "on 1 Ray worker (2 CPU cores each)" in again.stdout
    assert "done 1, skipped 2 (already there), failed 1" in again.stdout
    assert (tmp_path / "ray" / "small.png").exists()


@pytest.mark.slow
def test_sweep_on_ray_gives_the_grid_of_a_run_here(folder: Path, tmp_path: Path, tiny_sd: Path,
                                                    ray_cluster) -> None:  # type: ignore[no-untyped-def]
    common = ("sweep", str(folder / "astronaut.png"), "a watercolor", "--model", str(tiny_sd), "--seed", "5",
              "--steps", "3", "--strength", "0.3,0.7,1", "--cfg", "2,6")
    here = img2img(*common, "-o", str(tmp_path / "here"), env={"OMP_NUM_THREADS": "1"})
    assert here.returncode == 0, here.stderr
    spread = img2img(*common, "-o", str(tmp_path / "ray"), "--ray", ray_cluster.address, "--cpus-per-worker", "1")
    assert spread.returncode == 0, spread.stderr
    made = _files(tmp_path / "ray")
    assert len(made) == 7 and "00007-sweep.png" in made  # six cells, then the grid
    assert made == _files(tmp_path / "here")


def test_bad_ray_options_are_one_line_errors(folder: Path, tmp_path: Path, tiny_sd: Path) -> None:
    command = ("batch", str(folder), "x", "-o", str(tmp_path / "out"), "--model", str(tiny_sd))
    assert_one_line_error(img2img(*command, "--ray", "my cluster"), "--ray should be auto",
                          "but got 'my cluster'")
    assert_one_line_error(img2img(*command, "--ray", "127.0.0.1:1"), "--ray should be the address of a running "
                          "Ray cluster", "nothing answers at 127.0.0.1:1")
    assert_one_line_error(img2img(*command, "--ray", "auto", "--ray-workers", "0"), "--ray-workers")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    served = img2img("serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--ray", "127.0.0.1:1")
    assert_one_line_error(served, "--ray should be the address of a running Ray cluster")


def test_without_ray_the_commands_never_import_it(folder: Path, tmp_path: Path) -> None:
    code = ("import sys\nfrom img2img.cli import main\nsys.argv = ['img2img', 'batch', sys.argv[1], 'fauve', "
            "'-o', sys.argv[2], '--model', 'builtin', '--strength', '0.5']\ntry:\n    main()\nexcept SystemExit:\n"
            "    pass\nprint('ray imported' if 'ray' in sys.modules else 'no ray')")
    result = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "out")], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.stdout.strip().endswith("no ray"), result.stdout + result.stderr
    assert len(list((tmp_path / "out").iterdir())) == 3


def test_a_packed_request_carries_its_pictures_and_unpacks_under_the_same_names(tmp_path: Path, photo: Path) -> None:
    Image.open(photo).save(tmp_path / "source.png")
    Image.open(photo).resize((64, 64)).save(tmp_path / "edges.png")
    request = GenerationRequest(source=tmp_path / "source.png", prompt="x", inpaint=None,
                                control=(ControlUnit("canny", image=tmp_path / "edges.png"), ControlUnit("depth")))
    packed = pack(request)
    assert isinstance(packed.source, Carried) and packed.source.data == (tmp_path / "source.png").read_bytes()
    assert isinstance(packed.control[0].image, Carried) and packed.control[1].image is None
    away = tmp_path / "worker"
    unpacked, paths = unpack(packed, away)
    assert Path(unpacked.source).name == "source.png" and Path(unpacked.source).read_bytes() == \
        (tmp_path / "source.png").read_bytes()
    assert Path(unpacked.source).is_relative_to(away)
    assert paths[str(unpacked.source)] == str(tmp_path / "source.png")
    assert pack(GenerationRequest(source=tmp_path / "gone.png", prompt="x")).source == tmp_path / "gone.png"


def test_the_workers_fit_the_cluster() -> None:
    def cluster(*nodes: dict[str, float]) -> SimpleNamespace:
        return SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": node} for node in nodes])

    two_nodes = cluster({"CPU": 16}, {"CPU": 6})
    assert plan(two_nodes, "auto", None, None, 100).describe() == "2 Ray workers (8 CPU cores each)"
    assert plan(two_nodes, "auto", None, 3, 100).workers == 5 + 2
    assert plan(two_nodes, "auto", None, 3, 4).workers == 4  # no more workers than requests
    assert plan(cluster({"CPU": 2}), "auto", None, None, 9).describe() == "1 Ray worker (2 CPU cores each)"
    gpus = cluster({"CPU": 32, "GPU": 4}, {"CPU": 32, "GPU": 4})
    assert plan(gpus, "auto", None, None, 100).describe() == "8 Ray workers (1 GPU each)"
    assert plan(gpus, "cpu", None, 16, 100).describe() == "4 Ray workers (16 CPU cores each)"
    with pytest.raises(InvalidArgument, match="cpus_per_worker should be at most 16"):
        plan(two_nodes, "auto", None, 32, 100)
    with pytest.raises(InvalidArgument, match="ray_workers should be at most 2"):
        plan(two_nodes, "auto", 3, None, 100)


def test_only_the_current_lease_ends_a_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    job = store.submit("me", 0, JobRequest("a" * 64 + ".png"), max_per_owner=5, max_total=5)
    first = store.claim_next("Ray actor pid 1 on 10.0.0.1")
    assert first is not None and first.lease and first.lease.startswith("Ray actor pid 1 on 10.0.0.1#")
    store.retry(job.id, first.lease)  # its actor died
    second = store.claim_next("Ray actor pid 2 on 10.0.0.2")
    assert second is not None and second.lease != first.lease and second.attempts == 2
    assert not store.finish(job.id, "done", outputs=[{"image": "late"}], lease=first.lease)  # the first came back
    store.retry(job.id, first.lease)  # ... and its retry changes nothing either
    assert store.finish(job.id, "done", outputs=[{"image": "once"}], lease=second.lease)
    assert not store.finish(job.id, "done", outputs=[{"image": "twice"}], lease=second.lease)
    store.close()
    row = sqlite3.connect(tmp_path / "jobs.db").execute("SELECT state, outputs, lease FROM jobs").fetchone()
    assert row == ("done", '[{"image": "once"}]', None)


@pytest.mark.slow
def test_batch_on_a_local_cluster_started_by_the_command(folder: Path, tmp_path: Path, tiny_sd: Path) -> None:
    (folder / "broken.png").unlink()
    common = ("batch", str(folder), "a watercolor", "--model", str(tiny_sd), "--seed", "5", "--steps", "3")
    here = img2img(*common, "-o", str(tmp_path / "here"), env={"OMP_NUM_THREADS": "2"})
    spread = img2img(*common, "-o", str(tmp_path / "ray"), "--ray", "local", "--cpus-per-worker", "2",
                     "--ray-workers", "1", env={"RAY_ADDRESS": "", "HOME": str(tmp_path / "home")})  # its token file
    assert here.returncode == 0 and spread.returncode == 0, spread.stderr
    assert "on 1 Ray worker (2 CPU cores each)" in spread.stdout
    assert _files(tmp_path / "ray") == _files(tmp_path / "here")
