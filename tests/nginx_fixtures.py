"""A real nginx running the framecdn template, for the nginx tests and the origin bench.

``infra/nginx/framecdn.conf.template`` is rendered with :class:`string.Template` (the
same substitution ``envsubst`` does for the listed variables), included in a minimal
nginx.conf whose pid, logs, temp and cache paths live in a directory of the caller's,
and run as ``nginx -p <dir> -c <conf> -g 'daemon off;'`` on a free loopback port.

Nothing here depends on pytest: ``bench/bench_origin.py`` runs the same nginx in front
of its own origin subprocess, so the numbers it publishes are for the config the tests
check. The helpers take the origin's base URL and its :class:`Settings` (what the
template needs), not a test origin object.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import string
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from framecdn.framestore.config import Settings
from framecdn.process_stop import stop_process_group
from tests.origin_fixtures import free_port

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "infra" / "nginx" / "framecdn.conf.template"
NGINX_CANDIDATES = ("/usr/sbin/nginx",)


class InstanceUIDs(Protocol):
    """What a URL needs of an instance (``tests.origin_fixtures.Expected`` has it)."""

    @property
    def study(self) -> str: ...

    @property
    def series(self) -> str: ...

    @property
    def sop(self) -> str: ...


def nginx_binary_or_none() -> str | None:
    """Debian's path first (not always on a non-root PATH), then PATH."""
    for candidate in NGINX_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nginx")


def template_variables(text: str) -> set[str]:
    """``${NAME}`` placeholders of the template (nginx's own variables are ``$lowercase``)."""
    names = set()
    for match in string.Template.pattern.finditer(text):
        name = match.group("braced")
        if name and name.upper() == name:
            names.add(name)
    return names


def render_template(values: dict[str, str]) -> str:
    """The template with every placeholder filled; a missing value is an error, not a blank."""
    text = TEMPLATE.read_text()
    missing = template_variables(text) - values.keys()
    assert not missing, f"template variables without a value: {sorted(missing)}"
    rendered = string.Template(text).safe_substitute(values)
    assert not template_variables(rendered), "unrendered placeholders left"
    return rendered


def main_conf(directory: Path, worker_processes: str = "1") -> str:
    """A minimal nginx.conf keeping every path nginx writes inside ``directory``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must write to our tmp dir
    return f"""{user}worker_processes {worker_processes};
error_log {directory}/error.log warn;
pid {directory}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    default_type application/octet-stream;
    client_body_temp_path {directory}/temp/client;
    proxy_temp_path {directory}/temp/proxy;
    fastcgi_temp_path {directory}/temp/fastcgi;
    uwsgi_temp_path {directory}/temp/uwsgi;
    scgi_temp_path {directory}/temp/scgi;
    include {directory}/framecdn.conf;
}}
"""


def variables_for(
    directory: Path, listen_port: int, origin_base: str, settings: Settings, **overrides: str
) -> dict[str, str]:
    """Template values for an origin at ``origin_base`` (http://host:port) run with
    ``settings``: root path, accel location and S3 endpoint must be the origin's own."""
    s3 = urlsplit(settings.s3_endpoint or "")
    values = {
        "NGINX_LISTEN": f"127.0.0.1:{listen_port}",
        "NGINX_SERVER_NAME": "_",
        "NGINX_ORIGIN": urlsplit(origin_base).netloc,
        "NGINX_S3_SERVER": s3.netloc,
        "NGINX_S3_HOST": s3.netloc,
        "NGINX_S3_SCHEME": s3.scheme,
        "NGINX_RESOLVER": "127.0.0.1",
        "NGINX_CACHE_DIR": str(directory / "cache"),
        "NGINX_CACHE_MAX_SIZE": "1g",
        "NGINX_S3_CACHE_MAX_SIZE": "1g",
        "NGINX_ACCESS_LOG": str(directory / "access.log"),
        # As docs/deployment.md says: collapse cold frame fills when the origin streams;
        # in accel mode only the object cache (which has its own lock) stores frames.
        "NGINX_FRAMES_CACHE_LOCK": "off" if settings.delivery == "accel" else "on",
        # Access control follows the origin's: the auth check only when it checks
        # credentials; limits far above what a test makes unless the test lowers them.
        "NGINX_AUTH_REQUEST": "/_framecdn_authorize" if settings.auth else "off",
        "NGINX_CACHE_SECRET": settings.cache_secret or "",
        "NGINX_LIMIT_RATE": "10000r/s",
        "NGINX_LIMIT_ANONYMOUS_RATE": "10000r/s",
        "NGINX_LIMIT_BURST": "10000",
        "FRAMECDN_ROOT_PATH": settings.root_path.rstrip("/"),
        "FRAMECDN_ACCEL_LOCATION": settings.accel_location,
    }
    values.update(overrides)
    return values


@dataclass
class RunningNginx:
    base: str
    root: str
    directory: Path
    process: subprocess.Popen[bytes]

    def instance_url(self, inst: InstanceUIDs) -> str:
        return f"{self.root}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}"

    def frames_url(self, inst: InstanceUIDs, frames: str) -> str:
        return f"{self.instance_url(inst)}/frames/{frames}"

    def metadata_url(self, inst: InstanceUIDs) -> str:
        return f"{self.instance_url(inst)}/metadata"

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""


def write_config(
    binary: str,
    directory: Path,
    values: dict[str, str],
    worker_processes: str = "1",
    edit: Callable[[str], str] | None = None,
) -> Path:
    """Render into ``directory`` and check it with ``nginx -t`` (fails loudly if wrong).

    ``edit`` changes the rendered text: for a benchmark of a variant of the shipped
    config, never for the tests, which check the template as it is."""
    for sub in ("temp", "cache"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    rendered = render_template(values)
    (directory / "framecdn.conf").write_text(edit(rendered) if edit else rendered)
    conf = directory / "nginx.conf"
    conf.write_text(main_conf(directory, worker_processes))
    check = subprocess.run(
        [binary, "-t", "-p", str(directory), "-c", str(conf)],
        check=False, capture_output=True, text=True,
    )
    assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
    return conf


def _wait_listening(process: subprocess.Popen[bytes], directory: Path, port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"nginx exited with {process.returncode}: "
                f"{(directory / 'nginx.out').read_text()}{(directory / 'error.log').read_text()}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("nginx did not listen within 10 s")
        time.sleep(0.02)


@contextlib.contextmanager
def run_nginx(
    binary: str,
    directory: Path,
    origin_base: str,
    settings: Settings,
    *,
    worker_processes: str = "1",
    edit: Callable[[str], str] | None = None,
    **overrides: str,
) -> Iterator[RunningNginx]:
    """nginx in the foreground (its own session) on a free port in front of ``origin_base``;
    ``overrides`` replace template values (e.g. ``NGINX_S3_HOST``). Stopped gracefully."""
    port = free_port()
    values = variables_for(directory, port, origin_base, settings, **overrides)
    conf = write_config(binary, directory, values, worker_processes, edit)
    with open(directory / "nginx.out", "wb") as log:  # the child keeps its own copy
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(conf), "-g", "daemon off;"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_listening(process, directory, port)
        base = f"http://127.0.0.1:{port}"
        yield RunningNginx(base, base + values["FRAMECDN_ROOT_PATH"], directory, process)
    finally:
        # SIGQUIT is nginx's graceful stop: workers finish their requests, the master exits.
        stop_process_group(process, 10, signum=signal.SIGQUIT)
