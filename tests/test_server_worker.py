"""The worker process against a real server: killed mid-job, a clean stop, models fixed at submission, and any
number of A1111 clients waiting without holding a thread each."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from img2img.models.loading import weights_sha256
from img2img.models.registry import ModelEntry, ModelRegistry
from server_process import ServerProcess, b64, events, submit, wait_final, wait_state

STYLE = {"model": "builtin", "prompt": "fauve", "strength": 0.8}
LONG = {"model": "tiny", "prompt": "a red boat", "strength": 1.0, "steps": 150, "size": [64, 64], "num_images": 8}


def _server(tmp_path: Path, tiny_sd: Path, **settings: Any) -> ServerProcess:
    config = tmp_path / "config"
    ModelRegistry(config).add(ModelEntry("tiny", str(tiny_sd)))
    return ServerProcess(tmp_path / "data", config, **settings)


def _wait_denoising(client: httpx.Client, job_id: str, attempt: int = 1) -> dict[str, Any]:
    """The job once its ``attempt`` has run a denoising step."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = wait_state(client, job_id, "running", timeout_s=120)
        if job["progress"]["step"] > 0 and job["attempts"] == attempt:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached a step of attempt {attempt}")


@pytest.mark.slow  # 14 s; CI runs it with -m slow
def test_a_killed_worker_is_replaced_and_its_job_retried_then_failed(tmp_path: Path, tiny_sd: Path,
                                                                     photo: Path) -> None:
    server = _server(tmp_path, tiny_sd, max_attempts=2).start()
    source = photo.read_bytes()
    try:
        with server.client() as client:
            job = submit(client, source, seed=5, **LONG)
            _wait_denoising(client, job["id"])
            first = server.worker_pid()
            os.kill(first, signal.SIGKILL)  # as the OOM killer does

            # A new worker runs the job again (attempt 2); the API answered all along.
            assert client.get("/v1/health").status_code == 200
            _wait_denoising(client, job["id"], attempt=2)
            second = server.worker_pid(other_than=first)
            os.kill(second, signal.SIGKILL)

            failed = wait_final(client, job["id"])
            assert failed["state"] == "failed", failed
            assert "worker process died" in failed["error"] and "2 times" in failed["error"]
            assert "SIGKILL" in failed["error"]

            # A third worker serves the next job.
            done = wait_final(client, submit(client, source, seed=1, **STYLE)["id"])
            assert done["state"] == "done" and done["attempts"] == 1
            health = client.get("/v1/health").json()
            assert health["worker"] in ("idle", "running")
    finally:
        server.stop()
    log = (server.data_dir / "server.log").read_text()
    assert log.count("the worker process died") == 2 and "Traceback" not in log


def test_sigterm_stops_in_seconds_keeps_every_job_and_ends_waits(tmp_path: Path, tiny_sd: Path, photo: Path) -> None:
    server = _server(tmp_path, tiny_sd).start()
    source = photo.read_bytes()
    answers: dict[str, Any] = {}

    def a1111_call() -> None:
        with server.client() as http:
            answers["a1111"] = http.post("/sdapi/v1/img2img", json={
                "init_images": [b64(source)], "prompt": "fauve", "seed": 3,
                "override_settings": {"sd_model_checkpoint": "builtin"}})

    def stream(job_id: str) -> None:
        with server.client() as http:
            answers["sse"] = [name for name, _ in events(http, job_id)]

    with server.client() as client:
        running = submit(client, source, seed=5, **LONG)
        _wait_denoising(client, running["id"])
        queued = [submit(client, source, seed=seed, **STYLE)["id"] for seed in (1, 2)]
        threads = [threading.Thread(target=a1111_call), threading.Thread(target=stream, args=(queued[0],))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(client.get("/v1/jobs").json()["jobs"]) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert server.process is not None
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(30)
    stopped_s = time.monotonic() - began
    for thread in threads:
        thread.join(30)

    assert stopped_s < 15, f"the stop took {stopped_s:.1f} s"
    log = server.log()
    assert "Traceback" not in log and "Cancel" not in log, log
    assert f"job {running['id']} went back to the queue; 4 queued jobs wait for the next start" in log
    assert answers["a1111"].status_code == 503 and answers["a1111"].json()["error"]["code"] == "stopping"
    assert answers["sse"][-1] == "stopping"
    with sqlite3.connect(server.data_dir / "img2img.db") as db:
        states = dict(db.execute("SELECT id, state || ':' || attempts FROM jobs").fetchall())
    assert states[running["id"]] == "queued:0" and all(states[job_id] == "queued:0" for job_id in queued)
    assert list(states.values()).count("queued:0") == 4  # the A1111 call's job too

    server.start()  # the kept jobs run after the restart, the interrupted one first
    try:
        with server.client() as client:
            client.post(f"/v1/jobs/{running['id']}/cancel")
            assert [wait_final(client, job_id)["state"] for job_id in queued] == ["done", "done"]
    finally:
        server.stop()


def test_the_model_is_fixed_when_the_job_is_accepted(tmp_path: Path, tiny_sd: Path, photo: Path) -> None:
    other = shutil.copytree(tiny_sd, tmp_path / "other-model")
    server = _server(tmp_path, tiny_sd)
    ModelRegistry(server.config_dir).add(ModelEntry("other", str(other)))
    server.start()
    source = photo.read_bytes()
    small = {"prompt": "a boat", "strength": 0.5, "steps": 4, "seed": 2}
    try:
        with server.client() as client:
            blocker = submit(client, source, seed=5, **LONG)
            wait_state(client, blocker["id"], "running")
            default = submit(client, source, **small)  # no model named: the default, tiny, fixed now
            assert default["request"]["model"] == "tiny"
            assert default["request"]["model_sha256"] == weights_sha256(tiny_sd)
            changed = submit(client, source, model="other", **small)

            ModelRegistry(server.config_dir).set_default("other")  # as 'img2img models default other' does
            _perturb_unet(other)  # the files under the name change while the job waits
            client.post(f"/v1/jobs/{blocker['id']}/cancel")

            ran = wait_final(client, default["id"])
            assert ran["state"] == "done" and "Model: tiny" in ran["images"][0]["parameters"]
            refused = wait_final(client, changed["id"])
            assert refused["state"] == "failed" and "files changed" in refused["error"], refused
    finally:
        server.stop()


def _perturb_unet(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = next((folder / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights)


@pytest.mark.slow  # 23 s: many clients waiting; CI runs it with -m slow
def test_waiting_a1111_clients_hold_no_thread_each(tmp_path: Path, tiny_sd: Path, photo: Path) -> None:
    waiters = 75
    server = _server(tmp_path, tiny_sd, model="builtin", max_queued_per_key=waiters, max_queued_total=waiters + 5)
    keys = [server.command("keys", "add", name).stdout.strip() for name in ("a", "b", "c")]
    server.start()
    source = b64(photo.read_bytes())
    codes: list[tuple[int, int]] = []
    lock = threading.Lock()

    def call(index: int) -> None:
        with server.client(keys[index % 3]) as http:
            response = http.post("/sdapi/v1/img2img", timeout=600, json={
                "init_images": [source], "prompt": "fauve", "seed": index, "denoising_strength": 0.8})
            seed = json.loads(response.json()["info"])["seed"] if response.status_code == 200 else None
            with lock:
                codes.append((response.status_code, seed))

    try:
        with server.client(keys[0]) as client:
            blocker = submit(client, photo.read_bytes(), seed=5, **LONG)
            wait_state(client, blocker["id"], "running")
            threads = [threading.Thread(target=call, args=(i,)) for i in range(waiters)]
            for thread in threads:
                thread.start()
            clients = [server.client(key) for key in keys]
            deadline = time.monotonic() + 120
            while sum(len(http.get("/v1/jobs", timeout=10).json()["jobs"]) for http in clients) < waiters + 1:
                assert time.monotonic() < deadline, "the calls' jobs were not all stored"
                time.sleep(0.1)
            # Every call waits now, behind a job that runs until it is cancelled. Before, each waiting call held
            # one of the 40 threads that run the API's plain routes, so these queued until a job ended.
            for path in ("/v1/health", "/v1/models", "/v1/jobs", "/sdapi/v1/progress"):
                assert client.get(path, timeout=10).status_code == 200
            client.post(f"/v1/jobs/{blocker['id']}/cancel")
            for thread in threads:
                thread.join(300)
            for http in clients:
                http.close()
    finally:
        server.stop()
    assert sorted(codes) == [(200, seed) for seed in range(waiters)]
    assert "Traceback" not in server.log()
