"""The server against a real ``img2img serve`` process: job life cycle, SSE progress, cancel, limits, errors.

Keys, tiers, restarts, the A1111 API and the fuzz run are in the other ``test_server_*`` modules.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from img2img.models.registry import ModelEntry, ModelRegistry
from server_process import ServerProcess, b64, events, image_from, submit, wait_final, wait_state

STYLE = {"model": "builtin", "prompt": "fauve", "strength": 0.8}
# A job that takes seconds on the tiny model, long enough to watch, cancel or kill while it runs.
LONG = {"model": "tiny", "prompt": "a red boat", "strength": 1.0, "steps": 150, "size": [64, 64]}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path) -> Path:
    folder = tmp_path_factory.mktemp("server-config")
    ModelRegistry(folder).add(ModelEntry("tiny", str(tiny_sd)))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path):  # type: ignore[no-untyped-def]
    process = ServerProcess(tmp_path_factory.mktemp("server-data"), models_dir, max_upload_bytes=2**20,
                            max_prompt_chars=300)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def source(photo: Path) -> bytes:
    return photo.read_bytes()


def test_job_life_cycle_with_events_list_and_formats(server: ServerProcess, source: bytes) -> None:
    with server.client() as client:
        job = submit(client, source, seed=5, **STYLE)
        assert job["state"] in ("queued", "running") and len(job["id"]) >= 22
        seen = list(events(client, job["id"]))
        names = [name for name, _ in seen]
        assert names[0] == "state" and names[-1] in ("done", "state")
        done = wait_final(client, job["id"])
        assert done["state"] == "done", done
        assert done["progress"]["fraction"] == 1.0 and done["error"] is None and done["position"] is None
        assert done["request"]["seed"] == 5 and done["request"]["prompt"] == "fauve"
        assert [image["seed"] for image in done["images"]] == [5]
        kept = done["images"][0]["retention"]  # how much of the source it kept
        assert set(kept) == {"structure", "colour", "detail"} and all(0 <= value < 1 for value in kept.values())
        listed = client.get("/v1/jobs").json()["jobs"]
        assert job["id"] in [item["id"] for item in listed]

        png = client.get(done["images"][0]["url"])
        assert png.headers["content-type"] == "image/png"
        original = image_from(png.content)
        assert original.size == (done["images"][0]["width"], done["images"][0]["height"])
        assert "fauve" in original.text["parameters"]
        for fmt, kind in (("jpeg", "JPEG"), ("webp", "WEBP")):
            response = client.get(done["images"][0]["url"], params={"format": fmt, "quality": 80})
            assert response.status_code == 200 and response.headers["content-type"] == f"image/{fmt}"
            converted = image_from(response.content)
            assert converted.format == kind and converted.size == original.size
            assert "fauve" in _parameters_in(response.content, server.data_dir / f"copy.{fmt}")
        assert client.get(done["images"][0]["url"], params={"format": "gif"}).status_code == 422
        assert client.get(f"/v1/jobs/{job['id']}/images/3").status_code == 404

        # The same request and seed give the same bytes.
        again = wait_final(client, submit(client, source, seed=5, **STYLE)["id"])
        assert client.get(again["images"][0]["url"]).content == png.content


def test_a_job_aims_its_strength_at_a_retention_target(server: ServerProcess, source: bytes) -> None:
    with server.client() as client:
        aimed = {**STYLE, "strength": 0.6, "keep_structure": 0.8}
        done = wait_final(client, submit(client, source, seed=4, **aimed)["id"])
        assert done["state"] == "done", done
        assert done["notes"][0].startswith("keep_structure 0.8: strength"), done["notes"]
        assert abs(done["images"][0]["retention"]["structure"] - 0.8) <= 0.05
        refused = client.post("/v1/jobs", json={"source": b64(source), **aimed, "keep_colour": 0.5})
        assert refused.status_code == 422 and "keep_colour" in refused.text


def test_recipes_are_listed_and_fill_in_what_a_job_leaves_out(server: ServerProcess, source: bytes) -> None:
    with server.client() as client:
        listed = client.get("/v1/recipes").json()
        names = [recipe["name"] for recipe in listed["recipes"]]
        assert "rainy-night-street" in names and listed["problems"] == []
        done = wait_final(client, submit(client, source, seed=4, model="builtin", recipe="rainy-night-street")["id"])
        assert done["state"] == "done", done
        assert done["request"]["prompt"] == "night-fire" and done["request"]["strength"] == 0.6
        mine = wait_final(client, submit(client, source, seed=4, model="builtin", recipe="pop-art",
                                         strength=0.2)["id"])  # what the job gives wins
        assert mine["request"]["prompt"] == "pop-blocks" and mine["request"]["strength"] == 0.2
        refused = client.post("/v1/jobs", json={"source": b64(source), "model": "builtin", "recipe": "nope"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "recipe"


def _parameters_in(data: bytes, path: Path) -> str:
    from img2img.imageio.metadata import read_metadata

    path.write_bytes(data)
    return read_metadata(path).parameters or ""


@pytest.mark.slow  # 20 s; CI runs it with -m slow
def test_diffusion_job_streams_steps_with_previews(server: ServerProcess, source: bytes) -> None:
    with server.client() as client:
        job = submit(client, source, model="tiny", prompt="a red boat", strength=1.0, steps=12, seed=3,
                     num_images=2)
        seen = list(events(client, job["id"]))
    names = [name for name, _ in seen]
    assert names[-1] == "done", names
    assert "started" in names or seen[0][1]["state"] == "running"  # it may have started before we listened
    steps = [data for name, data in seen if name == "step"]
    assert steps and all(data["total"] == 24 for data in steps)
    assert [data["step"] for data in steps] == sorted(data["step"] for data in steps)
    preview = steps[-1]["preview"]
    assert preview.startswith("data:image/jpeg;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1])))
    assert max(picture.size) <= 96
    assert len(seen[-1][1]["outputs"]) == 2


def test_cancel_a_running_job_between_steps(server: ServerProcess, source: bytes) -> None:
    with server.client() as client:
        job = submit(client, source, **LONG)
        outcome = None
        for name, _data in events(client, job["id"]):
            if name == "step" and outcome is None:
                outcome = client.post(f"/v1/jobs/{job['id']}/cancel")
                assert outcome.status_code == 200
            if name in ("done", "failed", "cancelled"):
                break
        assert name == "cancelled"
        final = wait_final(client, job["id"])
        assert final["state"] == "cancelled" and final["progress"]["step"] < final["progress"]["total"]
        assert final["images"] == [] and "cancel" in final["error"]


def test_cancel_a_queued_job_at_once_and_positions(server: ServerProcess, source: bytes) -> None:
    with server.client() as client:
        running = submit(client, source, **LONG)
        wait_state(client, running["id"], "running")
        first = submit(client, source, seed=1, **STYLE)
        second = submit(client, source, seed=2, **STYLE)
        assert (first["position"], second["position"]) == (1, 2)
        watched: list[tuple[str, dict]] = []
        watcher = threading.Thread(target=lambda: watched.extend(events(server.client(), second["id"])))
        watcher.start()
        wait_until(lambda: watched)  # the stream has begun: its first event is the job's state
        cancelled = client.post(f"/v1/jobs/{first['id']}/cancel").json()
        assert cancelled["state"] == "cancelled" and cancelled["position"] is None
        assert client.get(f"/v1/jobs/{second['id']}").json()["position"] == 1
        client.post(f"/v1/jobs/{running['id']}/cancel")
        assert wait_final(client, second["id"])["state"] == "done"
        watcher.join(60)
        names = [name for name, _ in watched]
        assert watched[0][1]["position"] == 2 and ("position", 1) in [(n, d.get("position")) for n, d in watched]
        assert names.index("started") > names.index("position") and names[-1] == "done"
        assert client.get(f"/v1/jobs/{first['id']}").json()["state"] == "cancelled"
        # A finished job stays as it was.
        assert client.post(f"/v1/jobs/{second['id']}/cancel").json()["state"] == "done"


def test_multipart_submit(server: ServerProcess, source: bytes) -> None:
    with server.client() as client:
        response = client.post("/v1/jobs/form", files={"source": ("photo.png", source, "image/png")},
                               data={"request": json.dumps({**STYLE, "seed": 9})})
        assert response.status_code == 202, response.text
        done = wait_final(client, response.json()["id"])
    assert done["state"] == "done" and done["images"][0]["seed"] == 9


def test_status_answers_while_a_job_runs(server: ServerProcess, source: bytes) -> None:
    with server.client() as client:
        job = submit(client, source, **LONG)
        wait_state(client, job["id"], "running")
        for _ in range(20):
            view = client.get(f"/v1/jobs/{job['id']}", timeout=2).json()
            assert view["state"] in ("running", "done")
        health = client.get("/v1/health", timeout=2).json()
        assert health["status"] == "ok"
        client.post(f"/v1/jobs/{job['id']}/cancel")
        wait_final(client, job["id"])


def wait_until(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _error(response, status: int, field: str | None, code: str | None = None) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    if code:
        assert error["code"] == code, error
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    return str(error["message"])


def test_bad_requests_are_4xx_json_naming_the_field(server: ServerProcess, source: bytes, tmp_path: Path) -> None:
    good = {"source": b64(source), **STYLE}
    with server.client() as client:
        post = client.post
        _error(post("/v1/jobs", json={**good, "strength": 2}), 422, "strength")
        _error(post("/v1/jobs", json={key: v for key, v in good.items() if key != "prompt"}), 422, "prompt")
        _error(post("/v1/jobs", json={**good, "colour": "red"}), 422, "colour")
        _error(post("/v1/jobs", json={**good, "size": [500, 512]}), 422, "size.0")
        _error(post("/v1/jobs", json={**good, "num_images": 9}), 422, "num_images")
        _error(post("/v1/jobs", json={**good, "sampler": "Warp drive"}), 422, "sampler")
        message = _error(post("/v1/jobs", json={**good, "prompt": "x" * 301}), 422, "prompt")
        assert "300" in message and "301" in message
        _error(post("/v1/jobs", json={**good, "source": "not base64!"}), 422, "source", "invalid_image")
        _error(post("/v1/jobs", json={**good, "source": b64(b"plain text")}), 422, "source", "invalid_image")
        for model in ("../../etc/passwd", "/tmp", "runwayml/stable-diffusion-v1-5"):
            message = _error(post("/v1/jobs", json={**good, "model": model}), 422, "model", "unknown_model")
            assert "tiny" in message
        _error(post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}), 422, "body")
        _error(post("/v1/jobs"), 422, "body")
        _error(client.get("/v1/jobs/no-such-job"), 404, "job_id", "not_found")
        _error(client.get("/v1/nowhere"), 404, None, "not_found")

        form = {"request": json.dumps(STYLE)}
        _error(post("/v1/jobs/form", files={"source": ("a.png", b"GIF89a nonsense", "image/png")}, data=form),
               422, "source", "invalid_image")
        _error(post("/v1/jobs/form", files={"source": ("a.png", source, "image/png")},
                    data={"request": '{"prompt": 3}'}), 422, "prompt")

        # Pixels over the cap: a 5000x4000 PNG compresses to a few kilobytes.
        big = io.BytesIO()
        Image.new("RGB", (5000, 4000), "white").save(big, format="PNG")
        message = _error(post("/v1/jobs", json={**good, "source": b64(big.getvalue())}), 422, "source")
        assert "20000000" in message.replace(",", "").replace("_", "")
        # Bytes over the cap (1 MiB here): refused before the body is read in full.
        noise = b64(bytes(range(256)) * 8192)
        _error(post("/v1/jobs", json={**good, "source": noise * 2}), 413, "body", "too_large")
        _error(post("/v1/jobs/form", files={"source": ("a.png", bytes(2**20 + 10), "image/png")}, data=form),
               413, "source", "too_large")


def test_many_status_reads_during_submissions_stay_consistent(server: ServerProcess, source: bytes) -> None:
    ids: list[str] = []
    errors: list[str] = []

    def client_thread(seed: int) -> None:
        with server.client() as client:
            try:
                ids.append(submit(client, source, seed=seed, **STYLE)["id"])
            except AssertionError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(ids)) == 8
    with server.client() as client:
        finals = [wait_final(client, job_id) for job_id in ids]
    assert all(job["state"] == "done" for job in finals)
    assert sorted(job["images"][0]["seed"] for job in finals) == list(range(8))


def test_fields_are_served_from_the_one_field_table(server: ServerProcess) -> None:
    """The API's schema, its field list and the library's request share defaults and limits."""
    from img2img import GenerationRequest
    from img2img.engine.request import FIELDS

    with server.client() as client:
        served = {field["name"]: field for field in client.get("/v1/fields").json()["fields"]}
        schema = client.get("/openapi.json").json()["components"]["schemas"]["JsonJob"]["properties"]
    request = GenerationRequest(source="x.png", prompt="")
    for spec in FIELDS:
        assert served[spec.name]["default"] == spec.default == getattr(request, spec.name), spec.name
        assert schema[spec.name].get("default") == spec.default, spec.name
    assert served["strength"] | {"low": 0.0, "high": 1.0, "a1111": "denoising_strength"} == served["strength"]
    assert served["steps_mode"]["choices"] == ["diffusers", "exact"]
