"""A real Orthanc (Debian's ``orthanc`` with ``orthanc-dicomweb``) for tests and benches.

:class:`OrthancServer` writes a private JSON config (HTTP on a free loopback port,
``RemoteAccessAllowed: false``, authentication on with one registered user, storage
and index in the caller's directory, the DICOMweb plugin at ``/dicom-web/``), starts
``Orthanc``, waits until it answers an authenticated request and always stops it
(waiting for the process to exit: its SQLite index stays locked until then, and a
restart on the same directory fails before that).

:class:`RelayProxy` sits between a client and Orthanc: it counts the requests by
path and can cut an answer after a number of bytes, as a broken network would.

Nothing here depends on pytest: the peer bench uses the same server.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Self

import httpx

from framecdn.process_stop import stop_process_group
from tests.origin_fixtures import free_port

ORTHANC_CANDIDATES = ("/usr/sbin/Orthanc",)
DICOMWEB_PLUGIN_PATTERNS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)


class OrthancError(RuntimeError):
    """Orthanc could not be started or did not answer."""


def orthanc_binary_or_none() -> str | None:
    for candidate in ORTHANC_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("Orthanc")


def dicomweb_plugin_or_none() -> str | None:
    for pattern in DICOMWEB_PLUGIN_PATTERNS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def missing_reason() -> str | None:
    """Why a real Orthanc cannot run here, or None when it can."""
    if orthanc_binary_or_none() is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)"
    if dicomweb_plugin_or_none() is None:
        return "the Orthanc DICOMweb plugin is not installed (Debian: orthanc-dicomweb)"
    return None


class OrthancServer:
    """One Orthanc process with a private config, storage and index under ``directory``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        stable_age: int = 1,
        http_compression: bool = False,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.username = "framecdn"
        self.password = secrets.token_urlsafe(16)
        self.stable_age = stable_age
        self.http_compression = http_compression
        self.extra_config = extra_config or {}
        self.log_path = self.directory / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_root(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def config(self) -> dict[str, Any]:
        plugin = dicomweb_plugin_or_none()
        if plugin is None:
            raise OrthancError(missing_reason() or "no DICOMweb plugin")
        storage = self.directory / "storage"
        return {
            "Name": "framecdn-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            # Orthanc 1.10 cannot bind its DICOM port to loopback only: keep it closed
            # (tests upload through REST), but on a free port of its own.
            "DicomServerEnabled": False,
            "DicomPort": self.dicom_port,
            "HttpCompressionEnabled": self.http_compression,
            "StableAge": self.stable_age,
            "SaveJobs": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            **self.extra_config,
        }

    # Lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Self:
        if self._process is not None:
            return self
        binary = orthanc_binary_or_none()
        if binary is None:
            raise OrthancError(missing_reason() or "no Orthanc")
        config_path = self.directory / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        config_path.chmod(0o600)  # it holds the password
        with open(self.directory / "orthanc.out", "ab") as out:
            self._process = subprocess.Popen(
                [binary, f"--logfile={self.log_path}", str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with {self._process.returncode}; see {self.log_path}"
                )
            try:
                answer = httpx.get(f"{self.url}/system", auth=self.auth, timeout=2)
                if answer.status_code == 200:
                    return
                last_error = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise OrthancError(
            f"Orthanc did not answer on {self.url} ({last_error}); see {self.log_path}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, timeout, kill_wait=10)

    def restart(self) -> None:
        """Stop, then start again on the same ports, storage and index."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # REST helpers ---------------------------------------------------------------------
    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.auth, **kwargs)

    def upload(self, path: str | os.PathLike[str]) -> str:
        """``POST /instances`` (streamed from disk); Orthanc's id of the stored instance."""
        with open(path, "rb") as body, self.client(timeout=600) as http:
            answer = http.post(
                "/instances", content=body, headers={"Content-Type": "application/dicom"}
            )
        answer.raise_for_status()
        return str(answer.json()["ID"])

    def delete_instance(self, instance_id: str) -> None:
        with self.client(timeout=30) as http:
            http.delete(f"/instances/{instance_id}").raise_for_status()

    def get_json(self, path: str) -> Any:
        with self.client(timeout=30) as http:
            answer = http.get(path)
        answer.raise_for_status()
        return answer.json()


_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|DELETE) (\S+) HTTP/1\.[01]\r\n")


class RelayProxy:
    """A TCP relay to a loopback port that counts requests by path and can cut answers.

    It understands just enough HTTP/1.1 for a client that sends one request at a time
    on a connection (httpx does): the bytes the server sends after a request line are
    that request's answer. Bodies of the client's requests are not parsed, so only send
    GETs through it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.paths: Counter[str] = Counter()
        self._cuts: list[tuple[re.Pattern[str], int, list[int]]] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, pattern: str) -> int:
        """How many requests had a path matching ``pattern`` (a regular expression)."""
        regex = re.compile(pattern)
        with self._lock:
            return sum(n for path, n in self.paths.items() if regex.search(path))

    def cut(self, pattern: str, *, after_bytes: int, times: int = 1) -> None:
        """Close the next ``times`` answers to paths matching ``pattern`` after ``after_bytes``."""
        with self._lock:
            self._cuts.append((re.compile(pattern), after_bytes, [times]))

    def _budget_for(self, path: str) -> int | None:
        with self._lock:
            self.paths[path] += 1
            for pattern, after_bytes, left in self._cuts:
                if left[0] > 0 and pattern.search(path):
                    left[0] -= 1
                    return after_bytes
        return None

    # Lifecycle -----------------------------------------------------------------------
    def start(self) -> Self:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                _close(client)  # the target is down: the client sees the connection drop
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            connection = _Connection(client, server)
            self._spawn(self._client_to_server, connection)
            self._spawn(self._server_to_client, connection)

    def _client_to_server(self, connection: _Connection) -> None:
        pending = b""
        try:
            while data := connection.client.recv(65536):
                pending += data
                while match := _REQUEST_LINE.search(pending):
                    budget = self._budget_for(match.group(2).decode("latin-1"))
                    connection.cut_budget = budget
                    pending = pending[match.end() :]
                pending = pending[-8192:]
                connection.server.sendall(data)
        except OSError:
            pass
        finally:
            connection.close()

    def _server_to_client(self, connection: _Connection) -> None:
        try:
            while data := connection.server.recv(65536):
                budget = connection.cut_budget
                if budget is not None:
                    if len(data) >= budget:
                        connection.client.sendall(data[:budget])
                        break  # cut mid-answer
                    connection.cut_budget = budget - len(data)
                connection.client.sendall(data)
        except OSError:
            pass
        finally:
            connection.close()


class _Connection:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.cut_budget: int | None = None

    def close(self) -> None:
        _close(self.client)
        _close(self.server)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
