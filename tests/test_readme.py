"""The README documents every setting and every command that exists."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from framecdn.cli import build_parser
from framecdn.framestore.config import ENVIRONMENT, Settings, environment_table

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_lists_every_environment_variable() -> None:
    missing = [variable for variable in ENVIRONMENT if f"`{variable}`" not in README]
    assert missing == []


def test_readme_configuration_table_is_the_generated_one() -> None:
    """Defaults and descriptions come from config.py alone; the README copies the table."""
    assert environment_table() in README


def test_undocumented_settings_stay_out_of_the_readme() -> None:
    hidden = [f.metadata["env"] for f in fields(Settings) if not f.metadata["documented"]]
    assert [name for name in hidden if name in ENVIRONMENT or f"`{name}`" in README] == []


def test_readme_lists_every_subcommand() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    missing = [name for name in commands if f"`framecdn {name}" not in README]
    assert missing == []


def test_quick_start_is_two_commands() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in quick_start.splitlines() if line.strip()]
    assert [line.split("#")[0].strip() for line in commands] == ["make demo", "make test"]
