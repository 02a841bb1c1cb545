"""Hostile input against a real server: out-of-range integers, decompression bombs on every route that reads a
picture, bodies streamed past the limit, and requests the engine would refuse later. None may answer 500 or
leave a traceback in the log."""

from __future__ import annotations

import json
import select
import socket
import struct
import zlib
from pathlib import Path

import pytest

from server_process import ServerProcess, b64, serving_tiny

HUGE = 2**63  # one past SQLite's largest integer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path):  # type: ignore[no-untyped-def]
    yield from serving_tiny(tmp_path_factory, tiny_sd, "hostile", model="builtin")


def bomb_png(side: int = 30000) -> bytes:
    """A PNG whose header says ``side`` x ``side`` pixels (900 megapixels for 30000) in about a hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _error(response: object) -> dict:
    status = getattr(response, "status_code", None)
    body = response.json()  # type: ignore[attr-defined]
    assert status is not None and 400 <= status < 500, (status, body)
    return body["error"]  # type: ignore[no-any-return]


def test_integers_past_64_bits_are_refused_naming_the_field(server: ServerProcess, photo: Path) -> None:
    source = b64(photo.read_bytes())
    with server.client() as client:
        for params, field in (({"before": HUGE}, "before"), ({"before": -1}, "before"), ({"limit": HUGE}, "limit")):
            response = client.get("/v1/jobs", params=params)
            assert response.status_code == 422 and _error(response)["field"] == field
        for body, field in (({"seed": HUGE}, "seed"), ({"steps": HUGE}, "steps"), ({"num_images": HUGE}, "num_images"),
                            ({"loops": -HUGE}, "loops")):
            response = client.post("/v1/jobs", json={"source": source, "prompt": "fauve", **body})
            assert response.status_code == 422 and _error(response)["field"] == field, response.text
        for body, field in (({"seed": HUGE}, "seed"), ({"subseed": HUGE}, "subseed"),
                            ({"mask_blur_x": -HUGE}, "mask_blur_x"), ({"steps": HUGE}, "steps")):
            response = client.post("/sdapi/v1/img2img", json={"init_images": [source], "prompt": "fauve", **body})
            assert response.status_code == 422 and _error(response)["field"] == field, response.text
        assert client.get(f"/v1/jobs/x/images/{HUGE}").status_code == 404


def test_decompression_bombs_are_refused_on_every_route_that_reads_a_picture(server: ServerProcess,
                                                                            photo: Path) -> None:
    bomb = bomb_png()
    with server.client() as client:
        answers = {
            "image": [client.post("/sdapi/v1/png-info", json={"image": b64(bomb)}),
                      client.post("/v1/parameters", files={"image": ("bomb.png", bomb, "image/png")})],
            "source": [client.post("/v1/jobs", json={"source": b64(bomb), "prompt": "fauve"}),
                       client.post("/v1/jobs/form", files={"source": ("bomb.png", bomb, "image/png")},
                                   data={"request": json.dumps({"prompt": "fauve"})})],
            "params_from": [client.post("/v1/jobs", json={"source": b64(photo.read_bytes()),
                                                          "params_from": b64(bomb)})],
            "init_images": [client.post("/sdapi/v1/img2img", json={"init_images": [b64(bomb)], "prompt": "fauve"})],
        }
    for field, responses in answers.items():
        for response in responses:
            error = _error(response)
            assert response.status_code == 422 and error["field"] in (field, "source"), response.text
            assert "pixels" in error["message"], error


def _chunked_post(server: ServerProcess, path: str, content_type: str, start: bytes = b"",
                  total: int = 40 * 2**20) -> tuple[int, dict]:
    """POST ``start`` then ``total`` bytes in 1 MB chunks with no Content-Length, stopping as soon as the server
    answers."""
    chunk = b"A" * 2**20
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        if start:
            sock.sendall(f"{len(start):x}\r\n".encode() + start + b"\r\n")
        sent = 0
        while sent < total and not select.select([sock], [], [], 0.02)[0]:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    head, body = answer.split(b"\r\n\r\n", 1)
    assert sent < total, "the server read the whole body"
    return int(head.split()[1]), json.loads(body)


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def test_a_body_streamed_past_the_limit_is_413_naming_it(server: ServerProcess) -> None:
    part = b'--x\r\nContent-Disposition: form-data; name="source"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    for path, kind, start in (("/v1/jobs", "application/json", b'{"source": "'),
                              ("/v1/jobs/form", "multipart/form-data; boundary=x", part),
                              ("/sdapi/v1/img2img", "application/json", b'{"init_images": ["')):
        status, body = _chunked_post(server, path, kind, start)
        assert status == 413 and body["error"]["field"] == "body", (path, body)
        assert "should be at most" in body["error"]["message"] and "bytes" in body["error"]["message"]
    with server.client() as client:
        assert client.get("/v1/health").status_code == 200


def test_a_builtin_job_without_a_style_is_refused_when_submitted(server: ServerProcess, photo: Path) -> None:
    source = b64(photo.read_bytes())
    with server.client() as client:
        native = client.post("/v1/jobs", json={"source": source, "prompt": "a cat in the snow"})
        a1111 = client.post("/sdapi/v1/img2img", json={"init_images": [source], "prompt": "a cat in the snow"})
        listed = client.get("/v1/jobs").json()["jobs"]
    for response in (native, a1111):
        error = _error(response)
        assert response.status_code == 422 and error["field"] == "prompt" and "fauve" in error["choices"], error
    assert not [job for job in listed if job["request"]["prompt"] == "a cat in the snow"]


def test_the_log_holds_no_traceback(server: ServerProcess) -> None:
    """Last in this module: every refusal above was an answer, not a crash."""
    assert "Traceback" not in server.log() and " 500 " not in server.log()
