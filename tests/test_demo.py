"""``framecdn demo`` (what ``make demo`` runs): store, study, ingest, origin, clean stop.

Started the way a script's ``&`` starts it (SIGINT ignored), it must still stop on SIGINT
and SIGTERM with its store; its printed exports must reach the store from another
command; a second run must reuse the generated study instead of writing it again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.origin_fixtures import free_port
from tests.processes import running
from tests.test_cli_s3 import exports, ignore_sigint, read_until, wait_gone

SMALL = ["--frames", "4", "--rows", "64", "--columns", "48"]


def demo(data_dir, *args: str) -> list[str]:
    return [sys.executable, "-m", "framecdn", "demo", "--data-dir", str(data_dir), *SMALL, *args]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_demo_serves_the_generated_study_and_stops_cleanly(tmp_path, stop) -> None:
    port = free_port()
    data_dir = tmp_path / "demo"
    marker = f"-dir={data_dir}"
    with running(demo(data_dir, "--port", str(port)), marker=marker,
                 stderr=subprocess.STDOUT, preexec_fn=ignore_sigint) as process:
        output = "".join(read_until(process, "Ctrl-C stops"))
        assert "1 instance ingested" in output, output
        assert "byte-exact" in output and "MISMATCH" not in output, output
        metadata_url = re.search(r"metadata\s+(\S+)", output).group(1)
        assert metadata_url.startswith(f"http://127.0.0.1:{port}/dicom-web/studies/")
        with urllib.request.urlopen(metadata_url) as response:
            metadata = json.load(response)
        assert metadata[0]["00280008"]["Value"] == [4]  # NumberOfFrames
        assert metadata[0]["7FE00010"]["BulkDataURI"].startswith(f"http://127.0.0.1:{port}/")

        # The printed exports point `framecdn stats` at the running demo.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAMECDN_"))}
        stats = subprocess.run(
            [sys.executable, "-m", "framecdn", "stats"],
            env={**env, **exports(output.splitlines())},
            capture_output=True, text=True, timeout=60,
        )
        assert stats.returncode == 0, stats.stderr
        assert "prefix 'demo/': 1 study, 1 instance, 7 objects" in stats.stdout

        process.send_signal(stop)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "stopping" in rest and "WARNING" not in rest, rest  # origin done before the store
        assert wait_gone(marker) == []


def test_a_second_demo_reuses_its_study(tmp_path) -> None:
    data_dir = tmp_path / "demo"
    first = subprocess.run(demo(data_dir, "--no-serve"), capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    assert "generated tomo-4x64x48.dcm" in first.stdout
    study = data_dir / "tomo-4x64x48.dcm"
    written = study.stat().st_mtime_ns

    second = subprocess.run(demo(data_dir, "--no-serve"), capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0, second.stderr
    assert "reusing tomo-4x64x48.dcm" in second.stdout
    assert "0 instances ingested, 0 metadata-only, 1 unchanged" in second.stdout
    assert study.stat().st_mtime_ns == written
    assert "export FRAMECDN_PREFIX=demo" in second.stdout

    study.write_bytes(study.read_bytes()[:-100])  # a run interrupted while writing it
    third = subprocess.run(demo(data_dir, "--no-serve"), capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 0 and "generated tomo-4x64x48.dcm" in third.stdout, third.stderr
    assert wait_gone(f"-dir={data_dir}") == []


def test_demo_without_npm_says_how_to_get_it_and_serves_the_rest(tmp_path) -> None:
    data_dir = tmp_path / "demo"
    no_npm = tmp_path / "bin"  # a PATH without node and npm
    no_npm.mkdir()
    env = {**os.environ, "PATH": str(no_npm)}
    command = demo(data_dir, "--port", str(free_port()), "--viewer", "--viewer-port",
                   str(free_port()), "--viewer-cache", str(tmp_path / "ohif"))
    with running(command, marker=f"-dir={data_dir}", stderr=subprocess.STDOUT, env=env,
                 preexec_fn=ignore_sigint) as process:
        output = "".join(read_until(process, "Ctrl-C stops"))
        assert "OHIF viewer not served: npm not found: install Node.js 20+ with npm" in output
        assert "byte-exact" in output and "viewer    http" not in output, output
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
    assert wait_gone(f"-dir={data_dir}") == []


def test_ctrl_c_of_the_demo_prints_only_what_a_person_reads(tmp_path) -> None:
    """A terminal's Ctrl-C reaches the whole foreground process group: render workers too."""
    port = free_port()
    data_dir = tmp_path / "demo"
    marker = f"-dir={data_dir}"
    with running(demo(data_dir, "--port", str(port)), marker=marker,
                 stderr=subprocess.STDOUT, start_new_session=True) as process:
        output = "".join(read_until(process, "Ctrl-C stops"))
        frame_url = re.search(r"frame 1\s+(\S+)", output).group(1)
        for n in (1, 2):  # rendering starts the worker processes
            with urllib.request.urlopen(frame_url[:-1] + f"{n}/rendered") as response:
                assert response.headers["content-type"] == "image/jpeg"
                assert response.read(2) == b"\xff\xd8"
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "stopping" in rest, rest
        assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    # The terminal shows what a person reads; the requests are in the access log file.
    assert "framecdn.access" not in output + rest and '"path":' not in output + rest
    assert f"access    {data_dir / 'access.log'}" in output
    logged = [json.loads(line) for line in (data_dir / "access.log").read_text().splitlines()]
    assert [r["path"].rsplit("/", 2)[-2:] for r in logged] == [
        ["frames", "1"], ["1", "rendered"], ["2", "rendered"]]
    assert wait_gone(marker) == []
