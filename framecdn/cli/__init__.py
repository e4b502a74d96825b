"""The ``framecdn`` command: the one place that sees both ingest and origin.

Each subcommand lives in its own module here and exposes ``register(subparsers)``,
which adds its parser and sets ``handler`` (a function of the parsed args that
returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from framecdn import __version__
from framecdn.framestore.config import Settings

#: Subcommand modules, in the order ``framecdn --help`` lists them.
COMMANDS = [
    "framecdn.cli.s3",
    "framecdn.cli.ingest",
    "framecdn.cli.serve",
    "framecdn.cli.demo",
    "framecdn.cli.lifecycle",
    "framecdn.cli.eviction",
    "framecdn.cli.follow_orthanc",
]


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that override the storage settings from the environment."""
    group = parser.add_argument_group("storage (overrides FRAMECDN_* / AWS_* variables)")
    group.add_argument("--endpoint", dest="s3_endpoint", help="S3 endpoint URL")
    group.add_argument("--bucket", help="bucket name")
    group.add_argument("--prefix", help="key prefix (e.g. one per clinic)")


def settings_from_args(args: argparse.Namespace, *names: str) -> Settings:
    """Settings from the environment, overridden by whichever of ``names`` were given."""
    base = Settings.from_env()
    names = names or ("s3_endpoint", "bucket", "prefix")
    return base.with_overrides(**{name: getattr(args, name, None) for name in names})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framecdn",
        description="A frame CDN origin for DICOMweb.",
    )
    parser.add_argument("--version", action="version", version=f"framecdn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per S3 request is debugging detail
        for noisy in ("aiohttp", "httpx", "httpcore", "botocore", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
