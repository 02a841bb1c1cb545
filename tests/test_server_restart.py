"""Durability: SIGKILL a real server in the middle of a job, start it again, and lose nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from img2img.models.registry import ModelEntry, ModelRegistry
from server_process import ServerProcess, submit, wait_final, wait_state

STYLE = {"model": "builtin", "prompt": "fauve", "strength": 0.8}
LONG = {"model": "tiny", "prompt": "a red boat", "strength": 1.0, "steps": 150, "size": [64, 64]}


def _kill_while_running(server: ServerProcess, job_id: str) -> None:
    with server.client() as client:
        wait_state(client, job_id, "running", timeout_s=120)
    server.kill()


def test_sigkill_mid_job_loses_nothing_and_retries_are_capped(tmp_path: Path, tiny_sd: Path, photo: Path) -> None:
    config = tmp_path / "config"
    ModelRegistry(config).add(ModelEntry("tiny", str(tiny_sd)))
    server = ServerProcess(tmp_path / "data", config, max_attempts=2)
    source = photo.read_bytes()
    try:
        server.start()
        with server.client() as client:
            long_job = submit(client, source, seed=11, **LONG)
            queued = [submit(client, source, seed=seed, **STYLE)["id"] for seed in (1, 2)]
        _kill_while_running(server, long_job["id"])

        # Restarted: the interrupted job runs again first (attempt 2), the queued ones are still there.
        server.start()
        with server.client() as client:
            view = wait_state(client, long_job["id"], "running", timeout_s=120)
            assert view["attempts"] == 2 and view["request"]["seed"] == 11
            assert [client.get(f"/v1/jobs/{job_id}").json()["state"] for job_id in queued] == ["queued"] * 2
        server.kill()

        # Killed on its last allowed attempt: it fails with a reason; the others run.
        server.start()
        with server.client() as client:
            failed = wait_final(client, long_job["id"])
            assert failed["state"] == "failed" and "2 times" in failed["error"], failed
            done = [wait_final(client, job_id) for job_id in queued]
            assert [job["state"] for job in done] == ["done", "done"]
            assert [job["images"][0]["seed"] for job in done] == [1, 2]
            for job in done:
                assert client.get(job["images"][0]["url"]).status_code == 200
            listed = client.get("/v1/jobs").json()["jobs"]
        assert sorted(job["id"] for job in listed) == sorted([long_job["id"], *queued])
    finally:
        server.stop()
    with sqlite3.connect(server.data_dir / "img2img.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 3
    images = list((server.data_dir / "images").rglob("*.*"))
    assert all(path.stat().st_size > 0 for path in images) and not list(server.data_dir.rglob(".partial-*"))
