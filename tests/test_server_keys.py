"""API keys against a real server: 401, isolation between keys, priority tiers, queue limits and 429."""

from __future__ import annotations

from pathlib import Path

import pytest

from img2img.models.registry import ModelEntry, ModelRegistry
from server_process import ServerProcess, b64, submit, wait_final, wait_state

STYLE = {"model": "builtin", "prompt": "fauve", "strength": 0.8}
LONG = {"model": "tiny", "prompt": "a red boat", "strength": 1.0, "steps": 150, "size": [64, 64]}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path):  # type: ignore[no-untyped-def]
    """A server with keys for alice (free), bob (pro) and carol (max); 3 queued jobs per key, 5 in all."""
    config = tmp_path_factory.mktemp("keys-config")
    ModelRegistry(config).add(ModelEntry("tiny", str(tiny_sd)))
    process = ServerProcess(tmp_path_factory.mktemp("keys-data"), config, max_queued_per_key=3,
                            max_queued_total=5)
    keys = {}
    for name, tier in (("alice", "free"), ("bob", "pro"), ("carol", "max")):
        made = process.command("keys", "add", name, "--tier", tier)
        assert made.returncode == 0, made.stderr
        keys[name] = made.stdout.strip()
    again = process.command("keys", "add", "alice")  # a positional argument is named as the usage line shows it
    assert again.returncode == 2
    assert again.stderr.strip() == "error: NAME should be a name without a key yet, but got 'alice'"
    listed = process.command("keys", "list")
    assert listed.stdout.split() == ["alice", "free", "bob", "pro", "carol", "max"]
    assert all(key not in listed.stdout for key in keys.values())
    process.start()
    yield process, keys
    process.stop()


def test_a_key_is_required_and_checked(keyed, photo: Path) -> None:  # type: ignore[no-untyped-def]
    server, keys = keyed
    with server.client() as anonymous:
        response = anonymous.get("/v1/jobs")
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/v1/jobs", headers={"X-API-Key": "i2i_wrong"}).status_code == 401
        assert anonymous.get("/v1/jobs", headers={"X-API-Key": keys["alice"]}).status_code == 200
        assert anonymous.get("/sdapi/v1/options", auth=("anyone", keys["bob"])).status_code == 200
        assert anonymous.get("/sdapi/v1/options", auth=("anyone", "i2i_wrong")).status_code == 401


def test_keys_see_and_cancel_only_their_own_jobs(keyed, photo: Path) -> None:  # type: ignore[no-untyped-def]
    server, keys = keyed
    with server.client(keys["alice"]) as alice, server.client(keys["bob"]) as bob:
        job = submit(alice, photo.read_bytes(), **STYLE)
        for response in (bob.get(f"/v1/jobs/{job['id']}"), bob.post(f"/v1/jobs/{job['id']}/cancel"),
                         bob.get(f"/v1/jobs/{job['id']}/events"), bob.get(f"/v1/jobs/{job['id']}/images/0")):
            assert response.status_code == 404, response.text
        assert job["id"] not in [item["id"] for item in bob.get("/v1/jobs").json()["jobs"]]
        assert wait_final(alice, job["id"])["state"] == "done"
        assert job["id"] in [item["id"] for item in alice.get("/v1/jobs").json()["jobs"]]


def test_higher_tiers_run_first_and_queues_are_capped(keyed, photo: Path) -> None:  # type: ignore[no-untyped-def]
    server, keys = keyed
    source = photo.read_bytes()
    with (server.client(keys["alice"]) as alice, server.client(keys["bob"]) as bob,
          server.client(keys["carol"]) as carol):
        blocker = submit(carol, source, **LONG)
        wait_state(carol, blocker["id"], "running")
        free = [submit(alice, source, seed=seed, **STYLE) for seed in range(3)]
        full = alice.post("/v1/jobs", json={"source": b64(source), **STYLE})
        assert full.status_code == 429 and full.headers["retry-after"].isdigit()
        assert "3" in full.json()["error"]["message"]
        paid = [submit(bob, source, seed=seed, **STYLE) for seed in range(2)]
        full = bob.post("/v1/jobs", json={"source": b64(source), **STYLE})
        assert full.status_code == 429 and "5" in full.json()["error"]["message"]
        # Paid jobs queued behind nothing but each other; free ones wait behind them.
        assert [bob.get(f"/v1/jobs/{job['id']}").json()["position"] for job in paid] == [1, 2]
        assert [alice.get(f"/v1/jobs/{job['id']}").json()["position"] for job in free] == [3, 4, 5]
        carol.post(f"/v1/jobs/{blocker['id']}/cancel")
        finished = [wait_final(bob, job["id"]) for job in paid] + [wait_final(alice, job["id"]) for job in free]
    assert all(job["state"] == "done" for job in finished)
    started = [job["started"] for job in finished]
    assert started == sorted(started), "order should be bob's two (pro, first come first served), then alice's"


def test_serving_beyond_localhost_needs_a_key(tmp_path: Path) -> None:
    lonely = ServerProcess(tmp_path / "data", tmp_path / "config")
    result = lonely.command("serve", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "host" in result.stderr and "keys add" in result.stderr and "Traceback" not in result.stderr


def test_removing_the_last_key_keeps_the_server_closed(tmp_path: Path, photo: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "config")
    key = server.command("keys", "add", "dave").stdout.strip()
    server.start()
    try:
        with server.client(key) as dave:
            assert dave.get("/v1/jobs").status_code == 200
        assert server.command("keys", "remove", "dave").returncode == 0
        with server.client() as anyone, server.client("i2i_junk") as junk, server.client(key) as removed:
            for client in (anyone, junk, removed):
                assert client.get("/v1/jobs").status_code == 401
                response = client.post("/v1/jobs", json={"source": b64(photo.read_bytes()), **STYLE})
                assert response.status_code == 401, response.text
            assert anyone.get("/v1/health").status_code == 200  # the server is up, just closed
        assert "requires API keys and none is left" in server.log()
    finally:
        server.stop()
