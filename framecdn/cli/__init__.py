"""The ``framecdn`` command: the one place that sees ingest, origin and maintenance.

Each subcommand lives in its own module here and exposes ``register(subparsers)``,
which adds its parser and sets ``handler`` (a function of the parsed args that
returns an exit code). Expected failures are raised as
:class:`~framecdn.errors.FramecdnError` and caught once, in :func:`main`: one line
on stderr, exit 1 (2 for usage errors); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, Protocol

from framecdn import __version__
from framecdn.errors import ConfigError, FramecdnError
from framecdn.framestore.config import ENVIRONMENT, Settings, redact_userinfo
from framecdn.origin.access_log import LOG_FORMAT

#: Subcommand modules, in the order ``framecdn --help`` lists them.
COMMANDS = [
    "framecdn.cli.s3",
    "framecdn.cli.ingest",
    "framecdn.cli.serve",
    "framecdn.cli.demo",
    "framecdn.cli.lifecycle",
    "framecdn.cli.eviction",
    "framecdn.cli.stats",
    "framecdn.cli.verify",
    "framecdn.cli.follow_orthanc",
    "framecdn.cli.api_key",
    "framecdn.cli.fill",
    "framecdn.cli.receive",
]

#: Said at the end of every ``--help``: where storage and credentials come from.
ENVIRONMENT_EPILOG = (
    "Storage comes from the environment, and flags override it: FRAMECDN_S3_ENDPOINT "
    "(unset: AWS S3), FRAMECDN_BUCKET, FRAMECDN_PREFIX; credentials from AWS_ACCESS_KEY_ID "
    "and AWS_SECRET_ACCESS_KEY (AWS_REGION, default us-east-1). Every variable is listed "
    "in the README (Configuration)."
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to options that have a default worth saying (not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class FramecdnParser(argparse.ArgumentParser):
    """Every framecdn parser: defaults in the help, the environment in the epilog."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("epilog", ENVIRONMENT_EPILOG)
        super().__init__(*args, **kwargs)
        # On every parser (subcommands are made of this class too), so `-v` goes before
        # or after the subcommand; unset here, False from the top parser's defaults.
        self.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="debug logging, and the traceback of an error",
        )


class Subcommands(Protocol):
    """What a command module's ``register`` is given: argparse's subparsers, by what it
    is used for (their class is private to argparse)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def _variable_of(name: str) -> str:
    return next(variable for variable, (field, _) in ENVIRONMENT.items() if field == name)


def setting_help(name: str, text: str, *, unset: str = "none") -> str:
    """Help for a flag that overrides a setting: names its variable and the built-in default.

    ``unset`` says what an empty default means (e.g. "AWS S3" for the endpoint).
    """
    default = {f.name: f.default for f in fields(Settings)}[name]
    shown = unset if default in (None, "") else default
    return f"{text} (default: ${_variable_of(name)}, else {shown})".replace("%", "%%")


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override the storage settings from the environment."""
    group = parser.add_argument_group("storage (overrides FRAMECDN_* / AWS_* variables)")
    group.add_argument(
        "--endpoint",
        dest="s3_endpoint",
        help=setting_help("s3_endpoint", "S3 endpoint URL", unset="AWS S3"),
    )
    group.add_argument("--bucket", help=setting_help("bucket", "bucket name"))
    group.add_argument("--prefix", help=setting_help("prefix", "key prefix, e.g. one per clinic"))


#: The flags of :func:`add_storage_flags`, by the setting each overrides.
STORAGE_FLAGS = {"s3_endpoint": "--endpoint", "bucket": "--bucket", "prefix": "--prefix"}


def settings_from_args(
    args: argparse.Namespace, *names: str, flags: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, overridden by whichever of ``names`` were given.

    ``flags`` spells the flag of each name (default: the storage flags, else
    ``--name``), so that a refused value is reported under the flag it came from.
    """
    spelled = {**STORAGE_FLAGS, **(flags or {})}
    names = names or tuple(flags or STORAGE_FLAGS)
    sources = {name: spelled.get(name, "--" + name.replace("_", "-")) for name in names}
    try:
        base = Settings.from_env()
        given = {name: getattr(args, name, None) for name in names}
        return base.with_overrides(sources, **given)
    except ValueError as exc:  # a setting framecdn refuses
        raise ConfigError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = FramecdnParser(prog="framecdn", description="A frame CDN origin for DICOMweb.")
    parser.add_argument("--version", action="version", version=f"framecdn {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a subcommand not built yet
            raise
        module.register(subparsers)
    parser.set_defaults(verbose=False)
    return parser


def command_name(args: argparse.Namespace) -> str:
    """``stats``, ``lifecycle apply``: how an error line names the command."""
    return " ".join(part for part in (args.command, getattr(args, "action", None)) if part)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=LOG_FORMAT,
    )
    if not args.verbose:  # one line per S3 request is debugging detail
        for noisy in ("aiohttp", "httpx", "httpcore", "botocore", "urllib3", "pynetdicom"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FramecdnError as exc:
        if args.verbose:
            traceback.print_exc()
        line = redact_userinfo(" ".join(str(exc).split())) or type(exc).__name__
        print(f"framecdn {command_name(args)}: {line}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
