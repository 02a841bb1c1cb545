"""A schema-driven fuzz run (schemathesis) over the server's OpenAPI document: no input gives a server error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from server_process import ServerProcess


def test_no_request_from_the_openapi_schema_gives_a_server_error(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "config", model="builtin", max_queued_total=50).start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{server.url}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "25", "--request-timeout", "60",
             "--generation-deterministic", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and int(generated[1]) >= 500 and generated[1] == generated[2], result.stdout[-3000:]
    assert "Traceback" not in server.log()
