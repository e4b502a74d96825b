"""``framecdn api-key``: make an API key and the line that accepts it (the key is shown once)."""

from __future__ import annotations

import argparse
import re

from framecdn.cli import Subcommands
from framecdn.errors import UsageError
from framecdn.origin.apikeys import digest_line, new_api_key
from framecdn.origin.scope import ALL_SITES

_NAME = re.compile(r"[A-Za-z0-9._-]+")


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "api-key",
        help="make an API key for a site; print it and its line for the keys file",
        description="Print a new random API key (256 bits) and the line to append to "
        "FRAMECDN_AUTH_API_KEYS_FILE. The file keeps only the key's SHA-256: store the key "
        "itself where its user keeps secrets; it is not shown again.",
    )
    parser.add_argument(
        "--site", required=True,
        help="site the key reads (several: comma-separated; * for every configured site)",
    )
    parser.add_argument("--subject", required=True, help="who uses it, as the audit log names it")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    sites = [s for s in args.site.split(",") if s]
    if not sites or not all(s == ALL_SITES or _NAME.fullmatch(s) for s in sites):
        raise UsageError(f"--site {args.site!r}: site names are letters, digits, '.', '_', '-'")
    if not _NAME.fullmatch(args.subject):
        raise UsageError(f"--subject {args.subject!r}: letters, digits, '.', '_', '-'")
    key = new_api_key()
    print(f"key:  {key}")
    print(f"line: {digest_line(key, ','.join(sites), args.subject)}")
    return 0
