"""The access log as docs/security.md documents it: pure JSON lines, read by the real jq.

``framecdn serve`` with auth on (API keys), its access lines redirected (stdout) or in a
file (``FRAMECDN_ACCESS_LOG``, two workers appending); the recipe is taken from the doc
itself, so the doc and the origin cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from framecdn.embedded_s3 import EmbeddedS3
from framecdn.framestore.config import Settings
from tests.auth_fixtures import Clinics, two_clinics
from tests.origin_fixtures import Expected, free_port
from tests.processes import running
from tests.test_serve import wait_healthy

SECURITY_DOC = Path(__file__).parent.parent / "docs" / "security.md"
JQ = shutil.which("jq")
needs_jq = pytest.mark.skipif(JQ is None and not os.environ.get("CI"), reason="no jq")


def documented_recipe() -> str:
    """The jq filter of "Who read study S" in docs/security.md."""
    text = SECURITY_DOC.read_text()
    block = re.search(r"Who read study S.*?```sh\n(.*?)```", text, re.S)
    assert block, "docs/security.md lost its jq recipe"
    command = block.group(1)
    program = re.search(r"jq -c '(.*?)' access\.log", command, re.S)
    assert program, command
    return program.group(1)


def serve_environment(s3_store: EmbeddedS3, clinics: Clinics, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAMECDN_"))}
    env.update(s3_store.environment(prefix=clinics.base.prefix))
    env.update(
        FRAMECDN_AUTH="true",
        FRAMECDN_AUTH_SITES="a,b",
        FRAMECDN_AUTH_API_KEYS_FILE=str(clinics.api_keys_file),
        FRAMECDN_CORS_ORIGINS="https://viewer.example.org",
        **extra,
    )
    return env


def frame_path(inst: Expected, number: int = 1) -> str:
    return (f"/dicom-web/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}"
            f"/frames/{number}")


def read_as_a_clinic(base: str, clinics: Clinics) -> None:
    """Site a reads its study, probes site b's, and someone without a key knocks."""
    key_a = {"Authorization": f"Bearer {clinics.key_a}", "Accept": "application/octet-stream"}
    with httpx.Client(base_url=base, timeout=30) as http:
        response = http.get(frame_path(clinics.a1, 2), headers=key_a)
        assert response.status_code == 200 and response.content == clinics.a1.frames[1]
        assert http.get(frame_path(clinics.b1), headers=key_a).status_code == 404
        assert http.get(frame_path(clinics.a1)).status_code == 401
        assert http.get(frame_path(clinics.a2), headers=key_a).status_code == 200


@needs_jq
@pytest.mark.parametrize("where", ["stdout", "file"])
def test_the_documented_jq_recipe_finds_who_read_a_study(
    s3_store: EmbeddedS3, settings: Settings, tmp_path: Path, where: str
) -> None:
    clinics = two_clinics(settings, tmp_path)
    log = tmp_path / "access.log"
    port = free_port()
    command = [sys.executable, "-m", "framecdn", "serve", "--port", str(port)]
    if where == "stdout":  # framecdn serve >>access.log
        env = serve_environment(s3_store, clinics)
        stdout = log.open("a")
    else:  # a file of its own, two workers appending to it
        env = serve_environment(s3_store, clinics, FRAMECDN_ACCESS_LOG=str(log))
        command += ["--workers", "2"]
        stdout = (tmp_path / "stdout").open("w")
    with stdout, running(command, env=env, stdout=stdout) as process:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
        read_as_a_clinic(f"http://127.0.0.1:{port}", clinics)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
    assert "Started server process" in stderr  # the other lines are kept apart

    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(record, dict) for record in records)
    assert len([r for r in records if r["path"].endswith("/frames/1") or
                r["path"].endswith("/frames/2")]) == 4, lines
    if where == "file":
        assert (tmp_path / "stdout").read_text() == ""

    program = documented_recipe().replace('"S"', json.dumps(clinics.a1.study))
    jq = subprocess.run([JQ or "jq", "-c", program, str(log)], capture_output=True, text=True,
                        timeout=30, check=False)
    assert jq.returncode == 0, jq.stderr
    found = [json.loads(line) for line in jq.stdout.splitlines()]
    assert len(found) == 1, jq.stdout
    assert found[0]["site"] == "a" and found[0]["subject"] == "bridge-a"
    assert found[0]["path"] == frame_path(clinics.a1, 2) and found[0]["status"] == 200
    assert found[0]["bytes"] == len(clinics.a1.frames[1])

    # Probing another clinic is found the same way.
    probes = subprocess.run(
        [JQ or "jq", "-c", 'select(.reason=="study out of scope") | .study', str(log)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert probes.stdout.split() == [json.dumps(clinics.b1.study)], probes
