"""compose.yaml, Dockerfile and .dockerignore, checked without a Docker engine.

What can be checked here is checked for real: the YAML parses; every FRAMECDN_*/AWS_*
name is one framecdn reads; services, ports, paths and the nginx template agree with
each other; the Dockerfile's and the ingest service's commands parse with framecdn's
own CLI parser; the SeaweedFS flags exist in the `weed` the tests run; the s3 service's
identity file is valid JSON; the bucket one-shot creates a bucket on the real store.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from framecdn.cli import build_parser
from framecdn.embedded_s3 import EmbeddedS3, weed_binary
from framecdn.framestore.config import ENVIRONMENT
from framecdn.framestore.s3 import make_client

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
OUR_PREFIXES = ("FRAMECDN_", "AWS_")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?\-+][^}]*)?\}")
TEMPLATE_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def plain(value: str) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default."""
    return INTERPOLATION.sub(
        lambda m: m.group(0).split(":-", 1)[1][:-1] if ":-" in m.group(0) else "", value
    )


def test_the_expected_services_exist(services: dict) -> None:
    assert {"s3", "origin", "nginx", "ingest"} <= services.keys()
    assert services["ingest"].get("profiles") == ["tools"]
    assert services["nginx"]["image"].startswith("nginx:1.27")
    assert services["s3"]["image"].startswith("chrislusf/seaweedfs")
    assert services["origin"]["build"] == "."


def test_every_framecdn_and_aws_variable_is_one_framecdn_reads(services: dict) -> None:
    text = COMPOSE.read_text()
    used = {name for name in INTERPOLATION.findall(text) if name.startswith(OUR_PREFIXES)}
    for service in services.values():
        used |= {name for name in environment(service) if name.startswith(OUR_PREFIXES)}
    unknown = sorted(used - ENVIRONMENT.keys())
    assert not unknown, f"not in framecdn.framestore.config.ENVIRONMENT: {unknown}"
    assert {"FRAMECDN_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= used
    # Credentials are required from the environment, never written into the file.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        for service in services.values():
            value = environment(service).get(name)
            assert value is None or value.startswith(f"${{{name}:?"), (name, value)


def test_depends_on_names_existing_services(services: dict) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for target in depends if isinstance(depends, list) else depends.keys():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
    assert "s3" in services["bucket"]["depends_on"]
    assert "origin" in services["nginx"]["depends_on"]


def test_nginx_template_is_mounted_and_every_placeholder_is_set(services: dict) -> None:
    nginx = services["nginx"]
    mounts = [str(v).split(":") for v in nginx.get("volumes", [])]
    templates = [(src, dst) for src, dst, *_ in mounts if dst.startswith("/etc/nginx/templates/")]
    assert templates, "no template mounted into /etc/nginx/templates/"
    for source, target in templates:
        assert (REPO / source).is_file(), source
        assert target.endswith(".conf.template")  # rendered to /etc/nginx/conf.d/*.conf
        placeholders = set(TEMPLATE_PLACEHOLDER.findall((REPO / source).read_text()))
        env = environment(nginx)
        missing = placeholders - env.keys()
        assert not missing, f"template variables the nginx service does not set: {missing}"
        allowed = re.compile(env["NGINX_ENVSUBST_FILTER"])
        assert all(allowed.search(name) for name in placeholders)


def test_ports_hosts_and_paths_agree(services: dict) -> None:
    origin, nginx, _s3 = (environment(services[n]) for n in ("origin", "nginx", "s3"))
    origin_port = origin.get("FRAMECDN_PORT", "8080")
    assert nginx["NGINX_ORIGIN"] == f"origin:{origin_port}"
    assert origin_port in [str(p) for p in services["origin"].get("expose", [])]
    endpoint = urlsplit(origin["FRAMECDN_S3_ENDPOINT"])
    assert endpoint.hostname in services
    assert nginx["NGINX_S3_HOST"] == endpoint.netloc  # the host presigned URLs are signed for
    assert nginx["NGINX_S3_SERVER"] == endpoint.netloc
    assert nginx["NGINX_S3_SCHEME"] == endpoint.scheme
    command = " ".join(services["s3"]["command"])
    assert f"-s3.port={endpoint.port}" in command
    assert str(endpoint.port) in [str(p) for p in services["s3"].get("expose", [])]
    published = [str(p) for p in services["nginx"]["ports"]]
    assert any(plain(p).split(":")[-1] == nginx["NGINX_LISTEN"] for p in published), published
    public = urlsplit(plain(origin["FRAMECDN_PUBLIC_URL"]))
    assert any(plain(p).split(":")[0] == str(public.port) for p in published)
    for name in ("FRAMECDN_ROOT_PATH", "FRAMECDN_ACCEL_LOCATION"):
        assert nginx[name] == origin[name], name
    assert plain(origin["FRAMECDN_DELIVERY"]) in ("stream", "redirect", "accel")
    assert "ports" not in services["origin"] and "ports" not in services["s3"]  # nginx only


def dockerfile_cmd() -> list[str]:
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    assert len(lines) == 1
    return json.loads(lines[0][4:])


def test_dockerfile_builds_the_package_and_runs_a_real_subcommand() -> None:
    text = DOCKERFILE.read_text()
    assert re.findall(r"^FROM .*$", text, re.M) == ["FROM python:3.11-slim"]
    assert "pip install ." in text
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in copied.split():
            assert (REPO / path).exists(), path
    command = dockerfile_cmd()
    assert command[:2] == ["framecdn", "serve"]
    args = build_parser().parse_args(command[1:])  # exits (fails the test) on a bad flag
    assert args.command == "serve" and args.host == "0.0.0.0"
    ingest = services_of()["ingest"]["command"]
    assert ingest[0] == "framecdn"
    assert build_parser().parse_args(ingest[1:]).command == "ingest"


def services_of() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    assert not {"framecdn", "pyproject.toml", "README.md"} & ignored


def test_seaweedfs_flags_exist_and_identity_file_is_valid(tmp_path: Path) -> None:
    script = services_of()["s3"]["command"][0].replace("$$", "$")
    prelude, _, weed_line = script.partition("exec weed ")
    subcommand, *flags = shlex.split(weed_line)
    shown = subprocess.run([weed_binary(), subcommand, "-h"], capture_output=True, text=True)
    help_text = shown.stdout + shown.stderr
    known = set(re.findall(r"^\s+-([\w.]+)", help_text, re.M))
    for flag in flags:
        assert flag.lstrip("-").split("=")[0] in known, f"weed {subcommand} has no {flag}"
    config_path = re.search(r"-s3\.config=(\S+)", weed_line).group(1)
    target = tmp_path / "s3.json"
    secret = 'se"cr\\et/+' + uuid.uuid4().hex[:6]  # quotes and backslashes stay valid JSON
    subprocess.run(
        ["sh", "-c", prelude.replace(config_path, str(target))],
        env={
            "PATH": os.environ["PATH"],
            "AWS_ACCESS_KEY_ID": "KEY",
            "AWS_SECRET_ACCESS_KEY": secret,
        },
        check=True,
    )
    try:
        identities = json.loads(target.read_text())["identities"]
    except json.JSONDecodeError:
        pytest.fail("the s3 service writes invalid JSON for a secret containing a quote")
    assert identities[0]["credentials"] == [{"accessKey": "KEY", "secretKey": secret}]


def test_bucket_one_shot_creates_the_bucket_on_a_real_store(s3_store: EmbeddedS3) -> None:
    service = services_of()["bucket"]
    command = service["command"]
    assert command[:2] == ["python", "-c"]
    bucket = f"compose-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, **s3_store.environment(), "FRAMECDN_BUCKET": bucket}
    for _ in range(2):  # idempotent: the second run finds it
        done = subprocess.run(
            [sys.executable, "-c", command[2]], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert f"bucket ready: {bucket}" in done.stdout
    client = make_client(s3_store.settings(bucket=bucket))
    client.head_bucket(Bucket=bucket)
    client.delete_bucket(Bucket=bucket)
