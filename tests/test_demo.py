"""``framecdn demo`` (what ``make demo`` runs): store, generated study, ingest, origin, clean stop."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.origin_fixtures import free_port


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_demo_serves_the_generated_study_and_stops_cleanly(tmp_path, stop) -> None:
    port = free_port()
    data_dir = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "framecdn", "demo", "--data-dir", str(data_dir),
         "--frames", "4", "--rows", "64", "--columns", "48", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        output = "".join(lines)
        assert "1 instances ingested" in output, output
        assert "byte-exact" in output and "MISMATCH" not in output, output
        metadata_url = re.search(r"metadata\s+(\S+)", output).group(1)
        assert metadata_url.startswith(f"http://127.0.0.1:{port}/dicom-web/studies/")
        with urllib.request.urlopen(metadata_url) as response:
            metadata = json.load(response)
        assert metadata[0]["00280008"]["Value"] == [4]  # NumberOfFrames
        assert metadata[0]["7FE00010"]["BulkDataURI"].startswith(f"http://127.0.0.1:{port}/")
    finally:
        process.send_signal(stop)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    assert "stopping" in rest and "WARNING" not in rest, rest  # origin done before the store
    leftover = subprocess.run(
        ["pgrep", "-f", f"weed mini -dir={data_dir}"], capture_output=True, text=True
    ).stdout.split()
    assert leftover == []
