"""``img2img serve --ray``: a real server whose jobs run on the actors of a real local Ray cluster, through the
native and A1111 APIs; a Ray worker killed in the middle of a job leaves the job to finish once, on another lease."""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from server_process import ServerProcess, b64, events, image_from, serving_tiny, submit, wait_final

pytestmark = pytest.mark.slow
LONG = {"model": "tiny", "prompt": "a red boat", "strength": 1.0, "steps": 150, "size": [64, 64]}


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, ray_cluster):  # type: ignore[no-untyped-def]
    yield from serving_tiny(tmp_path_factory, tiny_sd, "ray", ray=ray_cluster.address, cpus_per_worker=1)


def _until(check, timeout_s: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_jobs_run_on_ray_workers_through_both_apis(server: ServerProcess, photo: Path) -> None:
    source = photo.read_bytes()
    with server.client() as client:
        _until(lambda: "jobs run on 2 Ray workers (1 CPU core each)" in server.log())
        jobs = [submit(client, source, model="tiny", prompt="a red boat", steps=6, seed=seed) for seed in (1, 2, 3)]
        seen = list(events(client, jobs[0]["id"]))
        names = [name for name, _ in seen]
        assert names[0] == "state" and names[-1] == "done"
        assert any(name == "step" and data.get("preview", "").startswith("data:image/jpeg") for name, data in seen)
        finals = [wait_final(client, job["id"]) for job in jobs]
        assert [final["state"] for final in finals] == ["done"] * 3
        assert [final["images"][0]["seed"] for final in finals] == [1, 2, 3]
        picture = image_from(client.get(finals[0]["images"][0]["url"]).content)
        assert picture.size == (64, 48) and "Seed: 1" in picture.info["parameters"]
        assert not any("img2img-ray" in note for final in finals for note in final["notes"])  # the server's paths

        # A running job is cancelled between two steps on its actor.
        long = submit(client, source, **LONG)
        for name, _ in events(client, long["id"]):
            if name == "step":
                assert client.post(f"/v1/jobs/{long['id']}/cancel").status_code == 200
                break
        cancelled = wait_final(client, long["id"])
        assert cancelled["state"] == "cancelled" and cancelled["progress"]["step"] < cancelled["progress"]["total"]

    with server.client() as client:
        response = client.post("/sdapi/v1/img2img", timeout=300, json={
            "init_images": [b64(source)], "prompt": "a red boat", "denoising_strength": 0.6, "steps": 5, "seed": 9,
            "batch_size": 2, "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    images = [image_from(base64.b64decode(data)) for data in response.json()["images"]]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert "Seed: 10" in images[1].info["parameters"]


def test_a_killed_ray_worker_leaves_its_job_to_finish_once(server: ServerProcess, photo: Path,
                                                           ray_cluster) -> None:  # type: ignore[no-untyped-def]
    with server.client() as client:
        job = submit(client, photo.read_bytes(), seed=4, **LONG)
        seen: list[tuple[str, dict]] = []
        watcher = threading.Thread(target=lambda: seen.extend(events(server.client(), job["id"], timeout_s=300)))
        watcher.start()
        _until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] > 3)
        running = _until(lambda: ray_cluster.actor_pids("JobWorker.run"))
        assert len(running) == 1
        os.kill(running[0], signal.SIGKILL)
        final = wait_final(client, job["id"], timeout_s=300)
        watcher.join(60)
    assert final["state"] == "done" and final["attempts"] == 2 and len(final["images"]) == 1
    names = [name for name, _ in seen]
    assert names.count("done") == 1 and names[-1] == "done"
    retried = [data for name, data in seen if name == "queued" and "retrying" in data.get("reason", "")]
    assert retried and "the Ray worker on" in retried[0]["reason"]
    row = sqlite3.connect(server.data_dir / "img2img.db").execute(
        "SELECT state, attempts, lease, outputs FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert row[:3] == ("done", 2, None) and row[3].count('"image"') == 1
