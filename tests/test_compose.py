"""compose.yaml, Dockerfile and .dockerignore, checked without a Docker engine.

What can be checked here is checked for real: the YAML parses; every FRAMECDN_*/AWS_*
name is one framecdn reads; services, ports, paths and the nginx templates agree with
each other; the Dockerfile's and the framecdn services' commands parse with framecdn's
own CLI parser; the SeaweedFS flags exist in the `weed` the tests run; the s3 service's
identity file is valid JSON; the bucket one-shot creates a bucket on the real store; the
images are pinned, every service that stays up has a health check, secrets come from
files the repository never holds; the viewer template runs in a real nginx and the OHIF
app-config (evaluated by node) points at nginx's DICOMweb root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
import yaml

from framecdn.cli import build_parser
from framecdn.embedded_s3 import EmbeddedS3, weed_binary
from framecdn.framestore.config import ENVIRONMENT, Settings
from framecdn.framestore.s3 import make_client
from tests.origin_fixtures import free_port, http_server

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


INNERMOST = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?([-?+])([^${}]*))?\}")


def plain(value: str) -> str:
    """A compose value as compose makes it with nothing set: ``${VAR:-default}`` is its
    default (nested ones too, innermost first), any other ``${...}`` is empty."""
    while True:
        resolved = INNERMOST.sub(lambda m: m.group(2) if m.group(1) == "-" else "", value)
        if resolved == value:
            return value
        value = resolved


def test_the_expected_services_exist(services: dict) -> None:
    assert {
        "s3", "origin", "nginx", "ingest", "orthanc", "follower", "fill", "viewer", "keycloak",
        "keycloak-db",
    } <= services.keys()
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
    assert {"origin", "viewer"} <= services["nginx"]["depends_on"].keys()
    assert "fill" in services["origin"]["depends_on"]
    assert "orthanc" in services["follower"]["depends_on"]


def test_nginx_template_is_mounted_and_every_placeholder_is_set(services: dict) -> None:
    nginx = services["nginx"]
    mounts = [str(v).split(":") for v in nginx.get("volumes", [])]
    templates = [(src, dst) for src, dst, *_ in mounts if dst.startswith("/etc/nginx/templates/")]
    assert {Path(src).name for src, _ in templates} == {
        "framecdn.conf.template", "viewer.conf.template"
    }
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


# The whole stack: Orthanc, follower, fill service, viewer ---------------------------------

LONG_RUNNING = (
    "s3", "origin", "fill", "orthanc", "follower", "viewer", "nginx", "keycloak", "keycloak-db"
)
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|REGISTERED_USERS", re.I)
FROM_ENVIRONMENT = re.compile(r"\$\{[A-Z][A-Z0-9_]*(:\?[^}]*|:-)?\}")


def test_images_are_pinned_and_long_running_services_have_health_checks(
    services: dict,
) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        if "build" in service:
            assert image == "framecdn:local", name
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+(\.\d+)+", tag), f"{name}: {image} is not pinned"
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert services[name].get("restart") == "unless-stopped", name
    assert services["orthanc"]["image"].startswith("orthancteam/orthanc:")
    assert services["viewer"]["image"].startswith("ohif/app:v3.13.")  # the OHIF the tests run


def test_no_secret_is_written_into_the_file(compose: dict, services: dict) -> None:
    for name, service in services.items():
        for variable, value in environment(service).items():
            if SECRET_WORDS.search(variable) and not variable.endswith("_FILE"):
                # Only from the environment: `${NAME:?...}` (required) or `${NAME:-}` (none).
                assert FROM_ENVIRONMENT.fullmatch(value), f"{name}: {variable} has a value"
    declared = compose["secrets"]
    for secret in declared.values():
        assert set(secret) == {"file"} and secret["file"].startswith("./secrets/")
    assert "/secrets/" in (REPO / ".gitignore").read_text().split()
    assert "secrets" in (REPO / ".dockerignore").read_text().split()
    for name, service in services.items():
        used = set(service.get("secrets", []))
        assert used <= declared.keys(), name
        for variable, value in environment(service).items():
            if variable.endswith("_CREDENTIALS_FILE"):
                assert value.startswith("/run/secrets/"), (name, variable)
                assert value.removeprefix("/run/secrets/") in used, (name, variable)
    # Orthanc takes its users from the secret named after the setting it fills.
    assert "ORTHANC__REGISTERED_USERS" in services["orthanc"]["secrets"]
    assert environment(services["orthanc"])["ORTHANC__AUTHENTICATION_ENABLED"] == "true"


def test_framecdn_services_run_real_commands_that_agree(services: dict) -> None:
    parser = build_parser()
    fill = parser.parse_args(services["fill"]["command"][1:])
    assert fill.command == "fill" and fill.fill_host == "0.0.0.0"
    assert str(fill.fill_port) in [str(p) for p in services["fill"]["expose"]]
    follower = parser.parse_args(services["follower"]["command"][1:])
    assert follower.command == "follow-orthanc"
    origin, fill_env = environment(services["origin"]), environment(services["fill"])
    assert origin["FRAMECDN_FILL_URL"] == f"http://fill:{fill.fill_port}"
    for env in (origin, fill_env):
        upstream = urlsplit(env["FRAMECDN_UPSTREAM_URL"])
        assert upstream.hostname == "orthanc"
        assert str(upstream.port) in [str(p) for p in services["orthanc"]["expose"]]
        orthanc_root = environment(services["orthanc"])["ORTHANC__DICOM_WEB__ROOT"]
        assert upstream.path + "/" == orthanc_root
    followed = urlsplit(environment(services["follower"])["FRAMECDN_ORTHANC_URL"])
    assert (followed.hostname, str(followed.port)) == ("orthanc", "8042")
    assert environment(services["orthanc"])["DICOM_WEB_PLUGIN_ENABLED"] == "true"


def test_the_viewer_is_behind_nginx_with_the_shipped_app_config(services: dict) -> None:
    nginx = environment(services["nginx"])
    host, _, port = nginx["NGINX_VIEWER"].partition(":")
    assert host == "viewer" and port in [str(p) for p in services["viewer"]["expose"]]
    assert "ports" not in services["viewer"]  # only through nginx
    published = [plain(str(p)) for p in services["nginx"]["ports"]]
    assert any(p.split(":")[-1] == nginx["NGINX_VIEWER_LISTEN"] for p in published)
    volumes = (str(v).split(":") for v in services["nginx"]["volumes"])
    mounts = {dst: src for src, dst, *_ in volumes}
    template = (REPO / "infra/nginx/viewer.conf.template").read_text()
    alias = re.search(r"alias (\S+);", template).group(1)
    assert (REPO / mounts[alias]).resolve() == (REPO / "infra/ohif/app-config.js").resolve()


def ohif_config() -> dict:
    """infra/ohif/app-config.js as OHIF sees it: evaluated by node (functions left out)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = (
        "global.window = {}; require(process.argv[1]);"
        "process.stdout.write(JSON.stringify(window.config));"
    )
    done = subprocess.run([node, "-e", script, str(REPO / "infra/ohif/app-config.js")],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_ohif_config_points_at_nginx_as_its_only_root(services: dict) -> None:
    config = ohif_config()
    (source,) = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    origin = environment(services["origin"])
    root = plain(origin["FRAMECDN_PUBLIC_URL"]) + origin["FRAMECDN_ROOT_PATH"]
    settings = source["configuration"]
    assert {settings[k] for k in ("qidoRoot", "wadoRoot", "wadoUriRoot")} == {root}
    assert settings["thumbnailRendering"] == "wadors"


def test_the_viewer_template_runs_in_a_real_nginx(tmp_path: Path) -> None:
    """Rendered with its variables, included in nginx: app-config.js from the mounted file,
    everything else from the viewer."""
    import string

    from tests.browser_fixtures import serve_directory
    from tests.nginx_fixtures import main_conf, nginx_binary_or_none
    from tests.processes import running

    binary = nginx_binary_or_none()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; CI is set, so this is a failure")
        pytest.skip("nginx is not installed")
    site = tmp_path / "viewer-files"
    site.mkdir()
    (site / "index.html").write_text("<html>the viewer</html>")
    (site / "app-config.js").write_text("window.config = {'the image': 'its own'};")
    port = free_port()
    with serve_directory(site, spa=True) as viewer, echo_server() as keycloak:
        text = (REPO / "infra/nginx/viewer.conf.template").read_text()
        text = text.replace("/etc/framecdn/ohif/app-config.js",
                            str(REPO / "infra/ohif/app-config.js"))
        rendered = string.Template(text).safe_substitute(
            NGINX_VIEWER_LISTEN=f"127.0.0.1:{port}", NGINX_VIEWER=viewer.removeprefix("http://"),
            NGINX_SERVER_NAME="_", NGINX_KEYCLOAK=keycloak.removeprefix("http://"),
        )
        assert "${" not in rendered
        (tmp_path / "temp").mkdir()
        (tmp_path / "framecdn.conf").write_text(rendered)
        conf = tmp_path / "nginx.conf"
        conf.write_text(main_conf(tmp_path))
        check = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(conf)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        command = [binary, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"]
        with running(command, start_new_session=True):
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    config = httpx.get(f"{base}/app-config.js")
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            assert config.status_code == 200
            assert config.content == (REPO / "infra/ohif/app-config.js").read_bytes()
            assert config.headers["cache-control"] == "no-cache"
            page = httpx.get(f"{base}/viewer?StudyInstanceUIDs=1.2.3")
            assert page.status_code == 200 and page.text == "<html>the viewer</html>"
            # OHIF's login: /auth/ goes to Keycloak as it is, with the headers it trusts.
            discovery = "/auth/realms/framecdn/.well-known/openid-configuration"
            seen = httpx.get(f"{base}{discovery}", headers={"X-Forwarded-For": "6.6.6.6"})
            assert seen.status_code == 200, seen.text
            echoed = seen.json()
            assert echoed["path"] == discovery
            assert echoed["x-forwarded-proto"] == "http"
            assert echoed["x-forwarded-host"] == f"127.0.0.1:{port}"
            # nginx appends the address it saw: Keycloak takes the last one it can trust.
            assert echoed["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
            console = "/auth/admin/master/console/"
            admin = httpx.get(f"{base}{console}")  # from loopback: allowed
            assert admin.status_code == 200 and admin.json()["path"] == console


# The readers' login: Keycloak, its realm, OHIF's oidc block, the origin's token checks ---

REALM_FILE = REPO / "infra/keycloak/framecdn-realm.json"


@contextlib.contextmanager
def echo_server(status: int = 200) -> Iterator[str]:
    """A loopback HTTP server answering every GET with ``status`` and a JSON echo of the
    path and the X-Forwarded-* headers; yields its base URL."""

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            echoed = {"path": self.path}
            echoed.update({k.lower(): v for k, v in self.headers.items()
                           if k.lower().startswith("x-forwarded-")})
            body = json.dumps(echoed).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Echo) as url:
        yield url


@pytest.fixture(scope="module")
def realm() -> dict:
    data = json.loads(REALM_FILE.read_text())
    assert isinstance(data, dict)
    return data


def ohif_client(realm: dict) -> dict:
    (client,) = [c for c in realm["clients"] if c["clientId"] == "ohif"]
    return client


def mapper(client: dict, kind: str, **config: str) -> dict:
    """The client's one protocol mapper of ``kind`` whose config has ``config``."""
    found = [m for m in client["protocolMappers"] if m["protocolMapper"] == kind
             and all(m["config"].get(k) == v for k, v in config.items())]
    assert len(found) == 1, (kind, config, found)
    return found[0]["config"]


def viewer_url(services: dict) -> str:
    """The URL browsers open OHIF at: Keycloak's public URL without its /auth."""
    keycloak = environment(services["keycloak"])
    hostname = plain(keycloak["KC_HOSTNAME"])
    assert hostname.endswith(keycloak["KC_HTTP_RELATIVE_PATH"])
    return hostname.removesuffix(keycloak["KC_HTTP_RELATIVE_PATH"])


def test_keycloak_runs_pinned_in_production_mode_behind_the_viewers_nginx(
    services: dict,
) -> None:
    keycloak = services["keycloak"]
    repository, _, tag = keycloak["image"].rpartition(":")
    assert repository == "quay.io/keycloak/keycloak" and re.fullmatch(r"26\.\d+\.\d+", tag)
    env = environment(keycloak)
    script = keycloak["command"][0]
    assert keycloak["entrypoint"] == ["/bin/bash", "-c"]
    assert script.rstrip().endswith("exec /opt/keycloak/bin/kc.sh start --import-realm")
    assert "start-dev" not in script
    assert env["KC_HTTP_ENABLED"] == "true" and env["KC_PROXY_HEADERS"] == "xforwarded"
    assert env["KC_HEALTH_ENABLED"] == "true"
    assert env["KC_HTTP_RELATIVE_PATH"] == "/auth"
    # The public URL is the viewer's (published by nginx), which passes /auth/ to Keycloak.
    viewer = urlsplit(viewer_url(services))
    nginx = environment(services["nginx"])
    published = [plain(str(p)).split(":") for p in services["nginx"]["ports"]]
    assert [str(viewer.port), nginx["NGINX_VIEWER_LISTEN"]] in published
    host, _, port = nginx["NGINX_KEYCLOAK"].partition(":")
    assert host == "keycloak" and port == env["KC_HTTP_PORT"]
    assert port in [str(p) for p in keycloak["expose"]]
    template = (REPO / "infra/nginx/viewer.conf.template").read_text()
    assert f"location {env['KC_HTTP_RELATIVE_PATH']}/ {{" in template
    assert "ports" not in keycloak and "ports" not in services["keycloak-db"]
    # The realm file is mounted read-only where --import-realm looks.
    mounts = [str(v).split(":") for v in keycloak["volumes"]]
    assert ["./infra/keycloak/framecdn-realm.json",
            "/opt/keycloak/data/import/framecdn-realm.json", "ro"] in mounts
    assert "keycloak" in services["nginx"]["depends_on"]


def test_keycloak_keeps_its_data_in_a_pinned_postgres_with_a_secret_password(
    compose: dict, services: dict,
) -> None:
    env = environment(services["keycloak"])
    assert env["KC_DB"] == "postgres"
    url = urlsplit(env["KC_DB_URL"].removeprefix("jdbc:"))
    assert url.scheme == "postgresql" and url.hostname in services
    database = services[url.hostname]
    assert database["image"].startswith("postgres:")
    db_env = environment(database)
    assert url.path == "/" + db_env["POSTGRES_DB"] and str(url.port) in database["expose"]
    assert env["KC_DB_USERNAME"] == db_env["POSTGRES_USER"]
    password_file = db_env["POSTGRES_PASSWORD_FILE"]
    assert password_file.startswith("/run/secrets/")
    secret = password_file.removeprefix("/run/secrets/")
    assert secret in database["secrets"] and secret in services["keycloak"]["secrets"]
    assert f"/run/secrets/{secret}" in services["keycloak"]["command"][0]
    assert compose["secrets"][secret]["file"].startswith("./secrets/")
    volume = [str(v).split(":") for v in database["volumes"]]
    assert ["keycloak-db", "/var/lib/postgresql/data"] in volume
    assert "keycloak-db" in compose["volumes"]
    assert services["keycloak"]["depends_on"]["keycloak-db"]["condition"] == "service_healthy"


def test_keycloak_reads_its_passwords_from_the_secret_files(
    services: dict, tmp_path: Path,
) -> None:
    """The service's own script, run by bash with the secret files in a temporary place:
    the passwords reach Keycloak's variables; a missing file stops it before Keycloak."""
    bash = shutil.which("bash")
    assert bash is not None
    script = services["keycloak"]["command"][0].replace("$$", "$")
    names = re.findall(r"/run/secrets/(\w+)", script)
    assert set(names) == set(services["keycloak"]["secrets"])
    for name in names:
        # a value with shell metacharacters, and the newline `echo > file` leaves
        (tmp_path / name).write_text(f"p$w'd\"{name}\n")
        script = script.replace(f"/run/secrets/{name}", str(tmp_path / name))
    script = script.replace("exec /opt/keycloak/bin/kc.sh start --import-realm", "exec env")
    env = {"PATH": os.environ["PATH"], **environment(services["keycloak"])}
    done = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert seen["KC_BOOTSTRAP_ADMIN_PASSWORD"] == "p$w'd\"keycloak_admin_password"
    assert seen["KC_DB_PASSWORD"] == "p$w'd\"keycloak_db_password"
    (tmp_path / names[-1]).unlink()
    missing = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "KC_DB_PASSWORD" not in missing.stdout


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_keycloak_health_check_asks_readiness_on_the_management_port(
    services: dict, status: int | None, healthy: bool,
) -> None:
    """The health check's bash, pointed at a local server instead of port 9000: healthy
    only when /auth/health/ready answers 200 (503 while starting; nothing listening)."""
    check = services["keycloak"]["healthcheck"]
    assert check["test"][:3] == ["CMD", "bash", "-c"]
    script = check["test"][3].replace("$$", "$")
    env = environment(services["keycloak"])
    ready = f"{env['KC_HTTP_RELATIVE_PATH']}/health/ready"
    assert "/dev/tcp/127.0.0.1/9000" in script and f"GET {ready} " in script
    bash = shutil.which("bash")
    assert bash is not None
    if status is None:
        port = free_port()
        outcome = subprocess.run([bash, "-c", script.replace("/9000", f"/{port}")],
                                 capture_output=True, timeout=30)
    else:
        with echo_server(status) as server:
            port = int(server.rpartition(":")[2])
            outcome = subprocess.run([bash, "-c", script.replace("/9000", f"/{port}")],
                                     capture_output=True, timeout=30)
    assert (outcome.returncode == 0) == healthy, outcome.stderr


def test_the_realm_has_the_public_pkce_client_ohif_uses(services: dict, realm: dict) -> None:
    config = ohif_config()
    (oidc,) = config["oidc"]
    viewer = viewer_url(services)
    client = ohif_client(realm)
    assert oidc["client_id"] == client["clientId"]
    assert client["enabled"] and client["publicClient"] and "secret" not in client
    assert client["standardFlowEnabled"] and not client["implicitFlowEnabled"]
    assert not client["directAccessGrantsEnabled"]  # no passwords through the client
    assert client["attributes"]["pkce.code.challenge.method"] == "S256"
    assert oidc["response_type"] == "code"  # OHIF 3.13: code flow with PKCE
    assert "openid" in oidc["scope"].split()
    # OHIF makes its relative redirect URIs absolute on the viewer's origin.
    assert viewer + oidc["redirect_uri"] in client["redirectUris"]
    assert all(uri.startswith(viewer + "/") and "*" not in uri for uri in client["redirectUris"])
    assert client["webOrigins"] == [viewer]
    post_logout = client["attributes"]["post.logout.redirect.uris"]
    assert post_logout == viewer + "/*" and oidc["post_logout_redirect_uri"].startswith("/")


def test_the_realm_puts_what_the_origin_checks_into_access_tokens(
    services: dict, realm: dict,
) -> None:
    origin = environment(services["origin"])
    client = ohif_client(realm)
    audience = mapper(client, "oidc-audience-mapper")
    assert audience["access.token.claim"] == "true"
    assert [audience["included.custom.audience"]] == plain(
        origin["FRAMECDN_AUTH_AUDIENCE"]).split(",")
    assert plain(origin["FRAMECDN_AUTH_AUTHORIZED_PARTIES"]).split(",") == [client["clientId"]]
    for attribute, setting in (("site", "FRAMECDN_AUTH_SITE_CLAIM"),
                               ("studies", "FRAMECDN_AUTH_STUDIES_CLAIM")):
        config = mapper(client, "oidc-usermodel-attribute-mapper", **{"user.attribute": attribute})
        assert config["claim.name"] == plain(origin[setting]), attribute
        assert config["access.token.claim"] == "true"
    assert plain(origin["FRAMECDN_AUTH_SUBJECT_CLAIM"]) == "preferred_username"


def test_the_realm_holds_no_users_and_only_admins_set_a_readers_site(realm: dict) -> None:
    assert realm["realm"] == "framecdn" and realm["enabled"]
    assert not realm.get("users") and "credentials" not in json.dumps(realm)
    assert not realm["registrationAllowed"]
    assert realm["sslRequired"] == "external"
    # A reading session: short access tokens, renewed by OHIF with the refresh token.
    assert 60 <= realm["accessTokenLifespan"] <= 900
    assert realm["ssoSessionIdleTimeout"] >= 1800 and realm["ssoSessionMaxLifespan"] >= 8 * 3600
    (profile_component,) = realm["components"]["org.keycloak.userprofile.UserProfileProvider"]
    (profile_text,) = profile_component["config"]["kc.user.profile.config"]
    attributes = {a["name"]: a for a in json.loads(profile_text)["attributes"]}
    assert {"username", "email", "firstName", "lastName"} <= attributes.keys()
    for name in ("site", "studies"):  # a reader must not grant themself another clinic
        assert attributes[name]["permissions"]["edit"] == ["admin"], name


def test_ohifs_authority_is_the_issuer_the_origin_checks(services: dict, realm: dict) -> None:
    (oidc,) = ohif_config()["oidc"]
    origin = environment(services["origin"])
    keycloak = environment(services["keycloak"])
    issuer = plain(origin["FRAMECDN_AUTH_ISSUER"])
    # Keycloak's `iss`: its public URL (KC_HOSTNAME) + /realms/<realm>.
    assert issuer == plain(keycloak["KC_HOSTNAME"]) + "/realms/" + realm["realm"]
    assert oidc["authority"] == issuer
    assert plain(origin["FRAMECDN_CORS_ORIGINS"]).split(",") == [viewer_url(services)]


def test_the_origin_fetches_keycloaks_keys_inside_the_network(
    services: dict, realm: dict,
) -> None:
    origin = environment(services["origin"])
    keycloak = environment(services["keycloak"])
    jwks = urlsplit(plain(origin["FRAMECDN_AUTH_JWKS_URL"]))
    assert (jwks.scheme, jwks.hostname) == ("http", "keycloak")
    assert str(jwks.port) == keycloak["KC_HTTP_PORT"]
    assert jwks.path == (f"{keycloak['KC_HTTP_RELATIVE_PATH']}/realms/{realm['realm']}"
                         "/protocol/openid-connect/certs")
    # framecdn takes compose's auth settings as they are (an http:// JWKS URL included).
    env = {k: plain(v) for k, v in origin.items() if k.startswith("FRAMECDN_AUTH")}
    settings = Settings.from_env({**env, "FRAMECDN_CORS_ORIGINS": viewer_url(services)})
    assert settings.auth and settings.auth_jwks_url == plain(origin["FRAMECDN_AUTH_JWKS_URL"])


def compose_auth_settings(services: dict, base: Settings, jwks_url: str,
                          sites: tuple[str, ...]) -> Settings:
    """``base`` with every FRAMECDN_AUTH_* and CORS setting of compose's origin, except the
    JWKS URL (a local one), the API keys file (none here) and the sites (given)."""
    origin = environment(services["origin"])
    env = {k: plain(v) for k, v in origin.items()
           if k.startswith("FRAMECDN_AUTH") or k == "FRAMECDN_CORS_ORIGINS"}
    env.update(FRAMECDN_AUTH_JWKS_URL=jwks_url, FRAMECDN_AUTH_SITES=",".join(sites))
    env.pop("FRAMECDN_AUTH_API_KEYS_FILE")
    composed = Settings.from_env(env)
    chosen = {f.name: getattr(composed, f.name) for f in fields(Settings)
              if f.metadata["env"] in env}
    return base.with_overrides(**chosen)


def test_a_token_shaped_as_the_realm_issues_it_opens_its_site_in_the_origin(
    services: dict, realm: dict, s3_store: EmbeddedS3, tmp_path: Path,
) -> None:
    """A real origin (uvicorn) with compose's auth settings and two sites; an RS256 access
    token exactly as the realm makes it (kid, iss, aud from the audience mapper, azp ohif,
    the site mapper's claim as a list): its site's study is read, the other site's study
    answers like a missing one, and the same token issued to another client is refused."""
    from tests.auth_fixtures import identity_provider, two_clinics
    from tests.origin_fixtures import run_origin

    clinics = two_clinics(s3_store.settings(prefix=f"compose-{uuid.uuid4().hex[:10]}"), tmp_path)
    client = ohif_client(realm)
    (oidc,) = ohif_config()["oidc"]
    audience = mapper(client, "oidc-audience-mapper")["included.custom.audience"]
    site_claim = mapper(client, "oidc-usermodel-attribute-mapper",
                        **{"user.attribute": "site"})["claim.name"]
    with identity_provider() as provider:
        settings = compose_auth_settings(services, clinics.base, provider.jwks_url, ("a", "b"))
        claims = {"iss": oidc["authority"], "aud": audience, "azp": client["clientId"],
                  site_claim: ["a"], "preferred_username": "reader-a"}
        token = provider.token(**claims)
        assert jwt.get_unverified_header(token)["kid"] == provider.keys[0].kid
        other_client = provider.token(**{**claims, "azp": "another-client"})
        with run_origin(settings) as origin:
            def metadata(study: str, bearer: str) -> httpx.Response:
                return httpx.get(f"{origin.root}/studies/{study}/metadata",
                                 headers={"Authorization": f"Bearer {bearer}",
                                          "Origin": settings.cors_origins[0]}, timeout=30)

            mine = metadata(clinics.a1.study, token)
            assert mine.status_code == 200, mine.text
            assert mine.json()[0]["0020000D"]["Value"] == [clinics.a1.study]
            assert mine.headers["access-control-allow-origin"] == settings.cors_origins[0]
            theirs, nowhere = metadata(clinics.b1.study, token), metadata("1.2.3.4", token)
            assert theirs.status_code == nowhere.status_code == 404
            refused = metadata(clinics.a1.study, other_client)
            assert refused.status_code == 401
            assert 'error="invalid_token"' in refused.headers["www-authenticate"]
