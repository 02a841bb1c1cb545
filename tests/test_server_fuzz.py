"""A schema-driven fuzz run (schemathesis) over the server's OpenAPI document: every phase, the stateful one
following the links from a submitted job to its reads, events, images, source and cancel. No input may give a
server error or leave a traceback in the log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server_process import ServerProcess


@pytest.mark.slow  # 22 s of generated requests; CI runs it with -m slow
def test_no_request_from_the_openapi_schema_gives_a_server_error(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "config", model="builtin", max_queued_total=500,
                           max_queued_per_key=500).start()
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{server.url}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "60", "--request-timeout", "60",
             "--phases", "examples,coverage,fuzzing,stateful",
             "--generation-deterministic", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path, env=env)
    finally:
        server.stop()
    output = result.stdout
    assert result.returncode == 0, output[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and int(generated[1]) >= 500 and generated[1] == generated[2], output[-3000:]
    links = re.search(r"API Links:\s+(\d+) covered", output)  # read, events, source, image, cancel of real jobs
    assert links and int(links[1]) >= 4, output[-4000:]
    log = (server.data_dir / "server.log").read_text()
    assert "Traceback" not in log and '" 500 ' not in log
    assert len(re.findall(r'"POST /v1/jobs HTTP/1.1" 202', log)) >= 5
