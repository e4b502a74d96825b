"""Ordinary mistakes get one line and an exit status, never a traceback.

Every bucket command is run against the real SeaweedFS with a missing bucket, a wrong
secret, a closed port and missing credentials: exit 1 and exactly one line on stderr,
``framecdn <command>: ...``. Usage errors exit 2. ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from framecdn.cli import main
from framecdn.embedded_s3 import EmbeddedS3
from framecdn.synthetic import write_tomosynthesis
from tests.origin_fixtures import free_port
from tests.processes import running

STUDY = "1.2.826.0.1.3680043.50.1"


@pytest.fixture(scope="module")
def dicom_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("in") / "tomo.dcm"
    return write_tomosynthesis(path, frames=2, rows=16, columns=16).path


def commands(dicom_file: Path) -> dict[str, list[str]]:
    return {
        "stats": ["stats"],
        "lifecycle show": ["lifecycle", "show"],
        "lifecycle apply": ["lifecycle", "apply", "--days", "7"],
        "lifecycle remove": ["lifecycle", "remove"],
        "pin": ["pin", STUDY],
        "evict": ["evict", STUDY],
        "sweep": ["sweep", "--max-bytes", "1G"],
        "ingest": ["ingest", "--no-progress", str(dicom_file)],
    }


FAULTS = {
    "missing bucket": ("bucket 'gone-", "does not exist"),
    "wrong secret": ("refused", "AWS_SECRET_ACCESS_KEY"),
    "closed port": ("cannot reach S3 at http://127.0.0.1:",),
    "missing credentials": ("no S3 credentials", "AWS_ACCESS_KEY_ID"),
}


def fault_environment(fault: str, s3_store: EmbeddedS3, tmp_path: Path) -> dict[str, str]:
    """The environment of a framecdn command that meets ``fault``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRAMECDN_"))}
    env.update(s3_store.environment())
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        FRAMECDN_PREFIX=f"t-{uuid.uuid4().hex[:8]}",
    )
    if fault == "missing bucket":
        env["FRAMECDN_BUCKET"] = f"gone-{uuid.uuid4().hex[:8]}"
    elif fault == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif fault == "closed port":
        env["FRAMECDN_S3_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    elif fault == "missing credentials":
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    return env


def run_with(env: dict[str, str], argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    for name in list(os.environ):
        if name.startswith(("AWS_", "FRAMECDN_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize(
    "command",
    ["stats", "lifecycle show", "lifecycle apply", "lifecycle remove", "pin", "evict", "sweep",
     "ingest"],
)
def test_each_command_says_each_fault_in_one_line(
    command, fault, s3_store, dicom_file, tmp_path, monkeypatch, capsys
):
    env = fault_environment(fault, s3_store, tmp_path)
    code, err = run_with(env, commands(dicom_file)[command], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"framecdn {command}: "), err
    for words in FAULTS[fault]:
        assert words in lines[0], err


def cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "framecdn", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_the_real_entry_point_prints_one_line_and_verbose_the_traceback(s3_store, tmp_path):
    env = fault_environment("wrong secret", s3_store, tmp_path)
    quiet = cli(["stats"], env)
    assert quiet.returncode == 1 and quiet.stdout == ""
    assert quiet.stderr.count("\n") == 1 and quiet.stderr.startswith("framecdn stats: ")
    loud = cli(["stats", "--verbose"], env)
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr and loud.stderr.rstrip().splitlines()[-1].startswith(
        "framecdn stats: "
    )


def test_serve_with_a_wrong_secret_or_bucket_says_so_at_start(s3_store, tmp_path):
    for fault in ("wrong secret", "missing bucket"):
        env = fault_environment(fault, s3_store, tmp_path)
        port = free_port()
        with running([sys.executable, "-m", "framecdn", "serve", "--port", str(port)],
                     env=env) as process:
            _out, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        assert err.strip().count("\n") == 0 and err.startswith("framecdn serve: "), err
        assert all(words in err for words in FAULTS[fault]), err


def test_a_second_store_on_a_data_directory_in_use_is_refused_in_one_line(s3_store, tmp_path):
    env = fault_environment("none", s3_store, tmp_path)
    command = [sys.executable, "-m", "framecdn", "s3", "--data-dir", str(s3_store.data_dir)]
    # (no marker: the session's own store runs on that directory; a child weed is found anyway)
    with running(command, env=env) as process:
        _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("framecdn s3: data directory ")
    assert f"already in use by another framecdn S3 store (pid {os.getpid()})" in err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["evict"], "name a study"),
        (["evict", "--dry-run"], "name a study"),
        (["sweep"], "give --max-bytes"),
        (["evict", "../etc"], "not digits and dots"),
        (["lifecycle", "apply", "--large-days", "3"], "go together"),
        (["lifecycle", "apply", "--date", "2020-01-01"], "add --yes"),
        (["lifecycle", "apply", "--large-bytes", "lots", "--large-days", "1"], "not a size"),
        (["stats", "--prefix", "../up"], "prefix"),
    ],
)
def test_usage_errors_exit_2_before_any_request(argv, words, monkeypatch, capsys):
    env = {"FRAMECDN_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    try:
        code, err = run_with(env, argv, monkeypatch, capsys)
    except SystemExit as exc:  # argparse's own usage errors
        code, err = exc.code, capsys.readouterr().err
    assert code == 2, err
    assert words in err and "Traceback" not in err and "cannot reach" not in err, err
    assert err.strip().splitlines()[-1].startswith("framecdn "), err
