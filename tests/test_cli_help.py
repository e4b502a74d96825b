"""What the CLI says: help with defaults and the credential variables, sizes, plurals, warnings."""

from __future__ import annotations

import argparse
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from framecdn.cli import build_parser
from framecdn.cli.eviction import eviction_summary, sweep_summary
from framecdn.cli.ingest import summary
from framecdn.cli.units import count, human_bytes, parse_size
from framecdn.framestore.bucket import Bucket
from framecdn.framestore.keys import InstanceKey
from framecdn.ingest.pipeline import IngestReport, IngestResult
from framecdn.maintenance.eviction import EvictionReport
from framecdn.maintenance.sweeper import Candidate, SweepReport
from tests.conftest import run_cli

ROOT = Path(__file__).parent.parent
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FRAMECDN_S3_ENDPOINT")


def every_parser() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser by name (``lifecycle apply`` for nested ones)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        # The subcommands action is the one whose choices are parsers by name.
        subcommands = [a for a in parser._actions if isinstance(a.choices, dict)]
        if not subcommands:
            found[name] = parser
        for action in subcommands:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}".strip())

    walk(build_parser(), "")
    return found


def test_every_option_has_help_and_says_its_default():
    for name, parser in every_parser().items():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"framecdn {name} {action.option_strings or action.dest}"
            default = action.default
            if default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {default})" in " ".join(text.split()), (name, action.dest)
        for variable in CREDENTIAL_VARIABLES:
            assert variable in text, (name, variable)


def test_storage_flags_name_their_variable_and_built_in_default():
    text = " ".join(every_parser()["stats"].format_help().split())
    assert "(default: $FRAMECDN_BUCKET, else framecdn)" in text
    assert "(default: $FRAMECDN_PREFIX, else none)" in text
    serve = " ".join(every_parser()["serve"].format_help().split())
    assert "(default: $FRAMECDN_PORT, else 8080)" in serve


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1M", 1_000_000),
        ("500G", 500_000_000_000),
        ("1.5TB", 1_500_000_000_000),
        ("1.5GiB", int(1.5 * 2**30)),
        ("2MiB", 2 * 2**20),
        ("8mib", 8 * 2**20),
        ("1234", 1234),
        ("0", 0),
        ("3 kB", 3000),
    ],
)
def test_sizes_take_suffixes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1G", "1X", "iB", "1.2.3M", ""])
def test_bad_sizes_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_every_size_flag_uses_the_one_parser():
    flags = {"lifecycle apply": "--large-bytes", "sweep": "--max-bytes"}
    parsers = every_parser()
    for name, flag in flags.items():
        [action] = [a for a in parsers[name]._actions if flag in a.option_strings]
        assert action.type is parse_size, name


def test_counts_are_plural_only_when_not_one():
    assert count(1, "instance") == "1 instance" and count(2, "instance") == "2 instances"
    assert count(1, "study", "studies") == "1 study" and count(0, "study", "studies") == (
        "0 studies"
    )
    assert human_bytes(999) == "999 B" and human_bytes(712_399_112_233) == "712.4 GB"


def test_summaries_say_1_instance_not_1_instances():
    report = IngestReport([IngestResult("a.dcm", "ingested", frames=1, bytes=10)], seconds=1)
    assert summary(report).startswith(
        "1 instance ingested, 0 metadata-only, 0 unchanged, 0 failed; 1 frame,"
    )
    key = InstanceKey("1.2", "1.2.3", "1.2.3.4")
    evicted = eviction_summary(EvictionReport([key], objects=1, bytes=1))
    assert evicted == "removed 1 instance of 1 study: 1 object, 1 byte"
    swept = sweep_summary(SweepReport(evicted=[Candidate("1.2", 5, 0.0, None, False)]))
    assert "evicted 1 study (least recently used first): 1.2" in swept


def test_lifecycle_apply_with_a_past_date_needs_yes(own_bucket, monkeypatch, s3_store, capsys):
    flags = ["--bucket", own_bucket.bucket, "--prefix", "clinic-y"]
    store = Bucket.from_settings(own_bucket)
    today = datetime.now(UTC).date()
    for when in (today, today - timedelta(days=3)):
        argv = ["lifecycle", "apply", "--date", when.isoformat(), *flags]
        assert run_cli(argv, monkeypatch, s3_store) == 2
        assert "is not in the future" in capsys.readouterr().err
        assert store.lifecycle_rules() == []

    assert run_cli([*argv, "--yes"], monkeypatch, s3_store) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "rules installed" in captured.out
    assert store.lifecycle_rules()[0]["Expiration"]["Date"].date() == when

    future = (today + timedelta(days=30)).isoformat()
    assert run_cli(["lifecycle", "apply", "--date", future, *flags], monkeypatch, s3_store) == 0
    assert "warning" not in capsys.readouterr().err


def test_lifecycle_large_bytes_takes_a_suffix(own_bucket, monkeypatch, s3_store, capsys):
    argv = ["lifecycle", "apply", "--days", "30", "--large-bytes", "1M", "--large-days", "7",
            "--bucket", own_bucket.bucket, "--prefix", "clinic-x"]
    assert run_cli(argv, monkeypatch, s3_store) == 0
    rules = {r["ID"]: r for r in Bucket.from_settings(own_bucket).lifecycle_rules()}
    large = rules["framecdn:clinic-x/:expire-large"]["Filter"]["And"]
    assert large["ObjectSizeGreaterThan"] == 1_000_000
    assert "larger than 1,000,000 bytes" in capsys.readouterr().out


def test_the_embedded_store_directory_is_git_ignored():
    paths = [".framecdn-s3/weed.log", ".demo/tomo.dcm"]
    ignored = subprocess.run(
        ["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.stdout.split() == paths


def test_readme_says_307_for_redirects():
    readme = (ROOT / "README.md").read_text()
    assert "302" not in readme and "307" in readme
