"""Static checks of the Docker deployment: docker-compose.yaml, the Dockerfiles and .env.example.

There is no Docker engine on the build machines, so nothing here starts a container. The
file is parsed with PyYAML and interpolated with the values of .env.example (the same way
``docker compose`` does for ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``, ``$$``),
then checked against the local stack's own sources of truth, read here and never
hard-coded on both sides:

* pom.xml                      -> Kafka and Spark (connector) versions
* requirements/requirements.lock -> pyspark, apache-airflow (and providers), Python version
* scripts/stack.sh, docs/architecture.md -> PostgreSQL / Redis majors, topics and partitions
* producer_app/config.py, consumer_app/config.py -> the variables the apps read

When the ``docker compose`` CLI plugin is installed, ``docker compose config -q`` validates
the file against the Compose specification too (it needs no engine).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
LOCK_FILE = ROOT / "requirements" / "requirements.lock"
POM_FILE = ROOT / "pom.xml"
STACK_SCRIPT = ROOT / "scripts" / "stack.sh"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

PRODUCER_DOCKERFILE = ROOT / "producer_app" / "Dockerfile"
CONSUMER_DOCKERFILE = ROOT / "consumer_app" / "Dockerfile"
AIRFLOW_DOCKERFILE = ROOT / "airflow" / "Dockerfile"
DOCKERFILES = (PRODUCER_DOCKERFILE, CONSUMER_DOCKERFILE, AIRFLOW_DOCKERFILE)

#: Variables that hold secrets: referenced only as ${VAR:?message} and shipped as placeholders.
SECRET_VARIABLES = ("POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET")

#: The local stack's parts, each with the compose service(s) that stand for it.
LOCAL_STACK_SERVICES = {
    "PostgreSQL": {"postgres"},
    "Redis": {"redis"},
    "Kafka": {"kafka", "kafka-init"},
    "Spark": {"spark-master", "spark-worker"},
    "consumer": {"consumer"},
    "producer": {"producer"},
    "Airflow": {"airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor"},
}
ONE_SHOT_SERVICES = {"kafka-init", "airflow-init"}

_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


# ----------------------------------------------------------------------------- readers
def read_env_example() -> tuple[dict[str, str], set[str]]:
    """(active NAME=value pairs, every documented name incl. commented-out ``# NAME=``)."""
    values: dict[str, str] = {}
    documented = set(read_env_example_optional())
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        active = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if active:
            values[active.group(1)] = active.group(2)
            documented.add(active.group(1))
    return values, documented


def read_env_example_optional() -> dict[str, str]:
    """Commented-out ``# NAME=default`` lines: optional settings and the default they document."""
    optional: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        commented = re.match(r"^#\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if commented:
            optional[commented.group(1)] = commented.group(2)
    return optional


def lock_versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK_FILE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def lock_python_version() -> str:
    match = re.search(r"--python[ =](\d+\.\d+)", LOCK_FILE.read_text(encoding="utf-8"))
    assert match, "requirements.lock does not say which Python it was compiled for (--python X.Y)"
    return match.group(1)


def pom_property(name: str) -> str:
    match = re.search(
        rf"<{re.escape(name)}>\s*([^<\s]+)\s*</{re.escape(name)}>", POM_FILE.read_text()
    )
    assert match, f"pom.xml has no <{name}> property"
    return match.group(1)


def normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def raw_compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(raw_compose_text())
    assert isinstance(document, dict), "docker-compose.yaml is not a mapping"
    return document


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string, with ``$$`` as a literal ``$``."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env
        current = env.get(name, "")
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if present else arg
        if op in (":?", "?"):
            if (op == ":?" and not current) or not present:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return current
        if op == ":+":
            return arg if current else ""
        if op == "+":
            return arg if present else ""
        return current

    parts = value.split("$$")
    return "$".join(_VARIABLE.sub(substitute, part) for part in parts)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(item, env) for key, item in node.items()}
    return node


def resolved_compose() -> dict[str, Any]:
    values, _ = read_env_example()
    return resolve(load_compose(), values)


def variables_used(text: str) -> dict[str, set[str]]:
    """Every variable the compose file interpolates -> the operators it is used with."""
    used: dict[str, set[str]] = {}
    for part in text.split("$$"):
        for match in _VARIABLE.finditer(part):
            name = match.group("braced") or match.group("plain")
            used.setdefault(name, set()).add(match.group("op") or "")
    return used


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def image_tag(image: str) -> tuple[str, str | None]:
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = name.rsplit(":", 1)
        return repository, tag
    return name, None if not digest else "@" + digest


def dockerfile_from_lines(path: Path) -> list[str]:
    return [
        line.split()[1]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip().upper().startswith("FROM ")
    ]


def dockerfile_arg(path: Path, name: str) -> list[str]:
    match = re.search(rf'^ARG {name}="([^"]*)"', path.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f'{path.relative_to(ROOT)} has no ARG {name}="..." line'
    return match.group(1).split()


def run_tool(executable: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a local tool by absolute path (found by shutil.which or named by the stack)."""
    return subprocess.run(  # noqa: S603 - fixed argument lists, no shell
        [executable, *args], capture_output=True, text=True, check=False, cwd=ROOT
    )


def version_tuple(text: str) -> tuple[int, ...]:
    match = re.match(r"(\d+(?:\.\d+)*)", text)
    assert match, f"no version number at the start of {text!r}"
    return tuple(int(part) for part in match.group(1).split("."))


# ----------------------------------------------------------------------------- the compose file
def test_compose_parses_as_a_compose_spec_file() -> None:
    document = load_compose()
    assert "version" not in document, "the Compose specification has no top-level `version:` key"
    assert isinstance(document.get("services"), dict) and document["services"]
    for name, service in document["services"].items():
        assert "image" in service or "build" in service, (
            f"service {name} has neither image nor build"
        )


def test_every_compose_variable_is_documented_in_env_example() -> None:
    _, documented = read_env_example()
    used = variables_used(raw_compose_text())
    missing = sorted(set(used) - documented)
    assert not missing, (
        f"docker-compose.yaml uses variables that .env.example does not list: {missing}"
    )


def test_secrets_are_required_and_shipped_as_placeholders() -> None:
    values, _ = read_env_example()
    used = variables_used(raw_compose_text())
    for name in SECRET_VARIABLES:
        assert name in used, f"{name} is not used by docker-compose.yaml"
        assert used[name] == {":?"}, (
            f"{name} must be referenced as ${{{name}:?message}}, found {used[name]}"
        )
        assert "change-me" in values.get(name, ""), (
            f".env.example must ship {name} as a change-me placeholder"
        )


def test_compose_fails_with_a_message_when_a_secret_is_missing() -> None:
    values, _ = read_env_example()
    without_password = {key: value for key, value in values.items() if key != "POSTGRES_PASSWORD"}
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        resolve(load_compose(), without_password)


def test_every_image_is_pinned_or_built_from_an_existing_dockerfile() -> None:
    for name, service in services().items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert (context / dockerfile).is_file(), f"{name}: {dockerfile} does not exist"
        image = service.get("image")
        if image is None:
            continue
        repository, tag = image_tag(image)
        assert tag, f"{name}: image {image} has no tag"
        assert tag != "latest" and not tag.startswith("latest-"), (
            f"{name}: image {image} is not pinned"
        )
        if build is None:
            assert re.search(r"\d", tag), (
                f"{name}: {image} is pinned to a floating tag, not a version"
            )


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart() -> None:
    for name, service in services().items():
        if name in ONE_SHOT_SERVICES:
            assert service.get("restart") == "no", f"one-shot service {name} must not restart"
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck, f"long-running service {name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name}: healthcheck disabled"
        assert healthcheck.get("test") and healthcheck["test"] != ["NONE"], (
            f"{name}: empty healthcheck"
        )
        assert service.get("restart") in {"unless-stopped", "always", "on-failure"}, (
            f"{name}: no restart policy"
        )


def test_depends_on_uses_conditions_that_fit_the_dependency() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends_on = service.get("depends_on")
        if depends_on is None:
            continue
        assert isinstance(depends_on, dict), f"{name}: depends_on must be a mapping with conditions"
        for dependency, spec in depends_on.items():
            assert dependency in all_services, f"{name} depends on unknown service {dependency}"
            assert dependency != name, f"{name} depends on itself"
            condition = (spec or {}).get("condition")
            if dependency in ONE_SHOT_SERVICES:
                assert condition == "service_completed_successfully", (
                    f"{name} -> {dependency}: {condition}"
                )
            else:
                assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
                assert all_services[dependency].get("healthcheck"), (
                    f"{dependency} has no healthcheck"
                )


def test_published_ports_bind_to_loopback_only() -> None:
    published = 0
    for name, service in resolved_compose()["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (
                    f"{name}: port {port} not bound to 127.0.0.1"
                )
            else:
                assert str(port).startswith("127.0.0.1:"), (
                    f"{name}: port {port} not bound to 127.0.0.1"
                )
                assert str(port).count(":") == 2, (
                    f"{name}: port {port} must name host and container ports"
                )
    assert published >= 5


def test_ports_published_are_the_ones_env_example_names() -> None:
    values, _ = read_env_example()
    compose = resolved_compose()["services"]
    expected = {
        "postgres": (values["POSTGRES_PORT"], "5432"),
        "redis": (values["REDIS_PORT"], "6379"),
        "kafka": (values["KAFKA_PORT"], "9092"),
        "airflow-api-server": (values["AIRFLOW_PORT"], "8080"),
        "producer": (values["PRODUCER_METRICS_PORT"], "9108"),
        "consumer": (values["CONSUMER_METRICS_PORT"], "9109"),
    }
    for name, (host_port, container_port) in expected.items():
        assert f"127.0.0.1:{host_port}:{container_port}" in compose[name]["ports"], name
    assert values["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1] == values["KAFKA_PORT"]


def test_init_sql_is_mounted_into_the_postgres_entrypoint() -> None:
    assert (ROOT / "init.sql").is_file()
    volumes = services()["postgres"].get("volumes", [])
    mounts = [v for v in volumes if isinstance(v, str) and v.split(":")[0] == "./init.sql"]
    assert mounts, "init.sql is not mounted into the postgres service"
    target = mounts[0].split(":")[1]
    assert target.startswith("/docker-entrypoint-initdb.d/") and target.endswith(".sql")


def test_airflow_metadata_database_is_created_before_init_sql() -> None:
    compose = load_compose()
    postgres = compose["services"]["postgres"]
    targets = {c["source"]: c["target"] for c in postgres.get("configs", [])}
    assert "airflow-database" in targets
    content = compose["configs"]["airflow-database"]["content"]
    assert re.search(r"create database airflow\b", content, re.IGNORECASE)
    init_target = next(v.split(":")[1] for v in postgres["volumes"] if v.startswith("./init.sql:"))
    assert (
        Path(targets["airflow-database"]).name < Path(init_target).name
    )  # the entrypoint sorts by name


def test_every_python_module_a_service_runs_exists() -> None:
    """`python -m X` in a command must name a module of the repository (X/__main__.py or X.py)."""
    modules = set()
    for name, service in services().items():
        command = service.get("command")
        if isinstance(command, list) and command[:2] == ["python", "-m"]:
            modules.add((name, command[2]))
    assert {module for _, module in modules} >= {"producer_app", "consumer_app"}
    for name, module in modules:
        path = ROOT / Path(*module.split("."))
        assert (path / "__main__.py").is_file() or path.with_suffix(".py").is_file(), (
            f"{name} runs `python -m {module}`, which does not exist in the repository"
        )


def test_compose_has_the_services_of_the_local_stack() -> None:
    names = set(services())
    for part, expected in LOCAL_STACK_SERVICES.items():
        assert expected <= names, f"{part}: compose lacks {sorted(expected - names)}"
    volumes = load_compose().get("volumes") or {}
    for stateful in ("postgres", "redis", "kafka"):
        mounted = [
            v.split(":")[0] for v in services()[stateful].get("volumes", []) if isinstance(v, str)
        ]
        assert any(source in volumes for source in mounted), f"{stateful} keeps no named volume"


# ----------------------------------------------------------------------------- versions
def test_postgres_and_redis_images_match_the_local_stack_majors() -> None:
    stack = STACK_SCRIPT.read_text(encoding="utf-8")
    architecture = ARCHITECTURE.read_text(encoding="utf-8")
    pg_major = re.search(r"/usr/lib/postgresql/(\d+)/bin", stack)
    assert pg_major, "scripts/stack.sh does not name its PostgreSQL major (PGBIN)"
    redis_major = re.search(r"\|\s*Redis (\d+)\s*\|", architecture)
    assert redis_major, "docs/architecture.md does not name the Redis major"

    pg_repository, pg_tag = image_tag(services()["postgres"]["image"])
    redis_repository, redis_tag = image_tag(services()["redis"]["image"])
    assert pg_repository == "postgres" and redis_repository == "redis", "use the official images"
    assert pg_tag and redis_tag
    assert version_tuple(pg_tag)[0] == int(pg_major.group(1))
    assert f"PostgreSQL {pg_major.group(1)}" in architecture
    assert version_tuple(redis_tag)[0] == int(redis_major.group(1))
    assert pg_tag.endswith("-bookworm") and redis_tag.endswith("-bookworm"), (
        "Debian 12 based, like the local stack"
    )


def test_postgres_and_redis_images_match_the_installed_local_servers() -> None:
    """Same major (PostgreSQL) and major.minor (Redis) as the installed Debian packages."""
    checked = 0
    pgbin = re.search(r'PGBIN="\$\{PGBIN:-([^}]+)\}"', STACK_SCRIPT.read_text(encoding="utf-8"))
    postgres = Path(pgbin.group(1), "postgres") if pgbin else None
    if postgres is not None and postgres.exists():
        out = run_tool(str(postgres), "--version").stdout
        local = re.search(r"PostgreSQL\)\s+(\d+)\.(\d+)", out)
        assert local, f"unexpected `postgres --version` output: {out!r}"
        _, tag = image_tag(services()["postgres"]["image"])
        assert tag and version_tuple(tag)[0] == int(local.group(1)), (
            f"postgres:{tag} vs local {out.strip()}"
        )
        checked += 1
    redis_server = shutil.which("redis-server")
    if redis_server:
        out = run_tool(redis_server, "--version").stdout
        local_redis = re.search(r"v=(\d+)\.(\d+)", out)
        assert local_redis, f"unexpected `redis-server --version` output: {out!r}"
        _, tag = image_tag(services()["redis"]["image"])
        assert tag and version_tuple(tag)[:2] == (
            int(local_redis.group(1)),
            int(local_redis.group(2)),
        )
        checked += 1
    if not checked:
        pytest.skip("neither the Debian PostgreSQL server nor redis-server is installed here")


def test_kafka_image_matches_the_pom() -> None:
    kafka_version = pom_property("kafka.version")
    for name in ("kafka", "kafka-init"):
        repository, tag = image_tag(services()[name]["image"])
        assert repository == "apache/kafka", f"{name}: use the official apache/kafka image"
        assert tag == kafka_version, (
            f"{name}: apache/kafka:{tag} but pom.xml has Kafka {kafka_version}"
        )


def test_spark_runs_the_locked_pyspark_with_the_pom_connector_on_java_17() -> None:
    spark_version = pom_property("spark.version")
    assert lock_versions()["pyspark"] == spark_version, (
        "pyspark in the lock and spark.version in pom.xml differ"
    )
    pom = POM_FILE.read_text(encoding="utf-8")
    assert re.search(r"<id>spark-connector</id>", pom)
    assert "spark-sql-kafka-0-10_2.13" in pom, (
        "the connector must be the Scala 2.13 build pyspark ships"
    )

    dockerfile = CONSUMER_DOCKERFILE.read_text(encoding="utf-8")
    assert "COPY pom.xml" in dockerfile and "-P spark-connector" in dockerfile
    assert "openjdk-17-jre-headless" in dockerfile
    assert any("temurin-17" in image for image in dockerfile_from_lines(CONSUMER_DOCKERFILE))
    assert "pyspark" in dockerfile_arg(CONSUMER_DOCKERFILE, "PYTHON_PACKAGES")

    consumer_image = services()["consumer"]["image"]
    for name in ("spark-master", "spark-worker"):
        assert services()[name]["image"] == consumer_image, (
            f"{name} must run the consumer's pyspark"
        )
    master_command = services()["spark-master"]["command"]
    assert "org.apache.spark.deploy.master.Master" in master_command
    worker_command = services()["spark-worker"]["command"]
    assert "org.apache.spark.deploy.worker.Worker" in worker_command
    host = master_command[master_command.index("--host") + 1]
    port = master_command[master_command.index("--port") + 1]
    assert f"spark://{host}:{port}" in worker_command
    assert environment(services()["consumer"])["SPARK_MASTER"] == f"spark://{host}:{port}"


def test_airflow_image_matches_the_locked_airflow_and_python() -> None:
    pins = lock_versions()
    python = lock_python_version()
    (base,) = dockerfile_from_lines(AIRFLOW_DOCKERFILE)
    repository, tag = image_tag(base)
    assert repository == "apache/airflow"
    assert tag == f"{pins['apache-airflow']}-python{python}", (
        f"{base} vs apache-airflow=={pins['apache-airflow']}"
    )
    for package in dockerfile_arg(AIRFLOW_DOCKERFILE, "AIRFLOW_PACKAGES"):
        assert normalize(package) in pins, (
            f"airflow/Dockerfile installs {package}, not pinned in the lock"
        )
    assert "apache-airflow-providers-postgres" in dockerfile_arg(
        AIRFLOW_DOCKERFILE, "AIRFLOW_PACKAGES"
    )
    assert "requirements/requirements.lock" in AIRFLOW_DOCKERFILE.read_text(encoding="utf-8")


def test_app_images_use_the_locked_python() -> None:
    python = lock_python_version()
    for dockerfile in (PRODUCER_DOCKERFILE, CONSUMER_DOCKERFILE):
        python_bases = [
            image for image in dockerfile_from_lines(dockerfile) if image.startswith("python:")
        ]
        assert python_bases, (
            f"{dockerfile.relative_to(ROOT)} does not build on the official python image"
        )
        for image in python_bases:
            _, tag = image_tag(image)
            assert tag and tag.startswith(f"{python}.") and "slim" in tag, (
                f"{image}: not a slim Python {python}"
            )


# ----------------------------------------------------------------------------- server settings
#: Settings of the local config files that are about where the local process lives (host
#: addresses, sockets, data directories, listeners): compose sets these its own way.
LOCAL_ONLY_SETTINGS = {
    "postgresql.conf": {"listen_addresses", "unix_socket_directories", "port"},
    "redis.conf": {"bind", "protected-mode", "port", "dir", "daemonize"},
    "server.properties": {
        "listeners",
        "advertised.listeners",
        "controller.quorum.voters",
        "log.dirs",
        "listener.security.protocol.map",
    },
}


def stack_heredoc(config_name: str) -> dict[str, str]:
    """The key/value lines scripts/stack.sh writes into a local server's config file."""
    stack = STACK_SCRIPT.read_text(encoding="utf-8")
    match = re.search(
        rf"cat >>?\S*{re.escape(config_name)}\S* <<'?EOF'?\n(.*?)\nEOF", stack, re.DOTALL
    )
    assert match, f"scripts/stack.sh no longer writes {config_name} from a heredoc"
    values, _ = read_env_example()
    settings: dict[str, str] = {}
    for line in match.group(1).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = re.split(r"\s*=\s*|\s+", line, maxsplit=1)
        value = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), value)
        settings[key] = value.strip("'\"")
    return {k: v for k, v in settings.items() if k not in LOCAL_ONLY_SETTINGS[config_name]}


def test_postgres_server_settings_match_the_local_stack() -> None:
    command = services()["postgres"]["command"]
    compose = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "-c")
    assert stack_heredoc("postgresql.conf") == compose


def test_redis_server_settings_match_the_local_stack() -> None:
    command = services()["redis"]["command"]
    assert command[0] == "redis-server"
    compose: dict[str, str] = {}
    key = ""
    for arg in command[1:]:
        if arg.startswith("--"):
            key = arg[2:]
            compose[key] = ""
        else:
            compose[key] = f"{compose[key]} {arg}".strip()
    assert stack_heredoc("redis.conf") == compose


def test_kafka_broker_settings_match_the_local_stack() -> None:
    kafka_env = environment(resolved_compose()["services"]["kafka"])
    for key, value in stack_heredoc("server.properties").items():
        variable = "KAFKA_" + key.upper().replace(".", "_")
        assert kafka_env.get(variable) == value, (
            f"{key}={value} locally, {variable}={kafka_env.get(variable)}"
        )


# ----------------------------------------------------------------------------- topics and settings
def test_topics_and_partitions_match_env_example_and_the_local_stack() -> None:
    values, _ = read_env_example()
    command = "\n".join(resolved_compose()["services"]["kafka-init"]["command"])
    created = {
        match.group(1): int(match.group(2))
        for match in re.finditer(r"--topic (\S+) --partitions (\d+)", command)
    }
    stack = STACK_SCRIPT.read_text(encoding="utf-8")
    local_specs = re.findall(r'"\$(KAFKA_TOPIC_[A-Z]+):(\$KAFKA_TOPIC_PARTITIONS|\d+)"', stack)
    assert local_specs, 'scripts/stack.sh: no ensure-topics "$KAFKA_TOPIC_X:N" arguments found'
    expected = {
        values[variable]: int(values["KAFKA_TOPIC_PARTITIONS"])
        if count.startswith("$")
        else int(count)
        for variable, count in local_specs
    }
    assert created == expected
    assert (
        values["KAFKA_TOPIC_PRICES"] == "binance.prices" and values["KAFKA_TOPIC_PARTITIONS"] == "6"
    )
    kafka_env = environment(resolved_compose()["services"]["kafka"])
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "like the local broker"


def test_apps_reach_the_services_by_their_in_network_addresses() -> None:
    compose = resolved_compose()["services"]
    advertised = environment(compose["kafka"])["KAFKA_ADVERTISED_LISTENERS"].split(",")
    in_network = next(
        item.split("://", 1)[1] for item in advertised if item.startswith("PLAINTEXT://")
    )
    host_side = next(
        item.split("://", 1)[1] for item in advertised if item.startswith("PLAINTEXT_HOST://")
    )
    values, _ = read_env_example()
    assert host_side == values["KAFKA_BOOTSTRAP_SERVERS"], (
        "host clients use the same bootstrap as the local stack"
    )
    for name in ("producer", "producer-demo", "consumer", "airflow-scheduler"):
        assert environment(compose[name])["KAFKA_BOOTSTRAP_SERVERS"] == in_network, name
    for name in ("consumer", "airflow-scheduler"):
        env = environment(compose[name])
        assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("postgres", "5432"), name
        assert (env["REDIS_HOST"], env["REDIS_PORT"]) == ("redis", "6379"), name
        assert (
            env["POSTGRES_DB"] == values["POSTGRES_DB"]
            and env["POSTGRES_USER"] == values["POSTGRES_USER"]
        )
    assert environment(compose["producer"])["PRODUCER_METRICS_PORT"] == "9108"
    assert environment(compose["consumer"])["CONSUMER_METRICS_PORT"] == "9109"


@pytest.mark.parametrize(
    ("app", "prefix", "names"),
    [
        ("producer_app", "PRODUCER_", ("producer", "producer-demo")),
        ("consumer_app", "CONSUMER_", ("consumer",)),
    ],
    ids=["producer", "consumer"],
)
def test_every_app_knob_reaches_its_service(app: str, prefix: str, names: tuple[str, ...]) -> None:
    config = ROOT / app / "config.py"
    if not config.is_file():
        pytest.skip(f"{app}/config.py does not exist yet")
    knobs = {name for name in _settings_env_names(config) if name.startswith(prefix)}
    for name in names:
        env = environment(services()[name])
        missing = sorted(knobs - set(env) - {f"{prefix}METRICS_HOST"})
        assert not missing, f"{name} does not pass {missing} (add `NAME:` to x-{app[:-4]}-knobs)"
        if f"{prefix}METRICS_HOST" in knobs:
            # A metrics server on the container's loopback cannot be reached through the port.
            assert env.get(f"{prefix}METRICS_HOST") == "0.0.0.0", f"{name}: {prefix}METRICS_HOST"  # noqa: S104


def test_services_get_only_the_secrets_they_use() -> None:
    compose = services()
    for name in ("producer", "producer-demo", "replay", "kafka", "kafka-init", "redis"):
        env = environment(compose[name])
        leaked = sorted(set(env) & {*SECRET_VARIABLES, "AIRFLOW_CONN_PIPELINE_POSTGRES"})
        assert not leaked, f"{name} receives secrets it does not use: {leaked}"
        assert "env_file" not in compose[name], (
            f"{name}: env_file would hand it every secret of .env"
        )


def test_airflow_services_share_one_image_the_dags_and_the_connection() -> None:
    compose = resolved_compose()["services"]
    values, _ = read_env_example()
    airflow = LOCAL_STACK_SERVICES["Airflow"]
    assert len({compose[name]["image"] for name in airflow}) == 1
    init_command = "\n".join(compose["airflow-init"]["command"])
    assert "airflow db migrate" in init_command
    assert compose["airflow-api-server"]["command"] == "api-server"
    assert compose["airflow-scheduler"]["command"] == "scheduler"
    assert compose["airflow-dag-processor"]["command"] == "dag-processor"
    for name in airflow - {"airflow-init"}:
        env = environment(compose[name])
        assert "./airflow/dags:/opt/airflow/dags:ro" in compose[name]["volumes"], name
        assert compose[name]["user"] == f"{values['AIRFLOW_UID']}:0", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        connection = json.loads(env["AIRFLOW_CONN_PIPELINE_POSTGRES"])
        assert connection == {
            "conn_type": "postgres",
            "host": "postgres",
            "port": 5432,
            "schema": values["POSTGRES_DB"],
            "login": values["POSTGRES_USER"],
            "password": values["POSTGRES_PASSWORD"],
        }
        assert env["RAW_RETENTION_DAYS"] == values["RAW_RETENTION_DAYS"]
        assert env["BINANCE_SYMBOLS"] == values["BINANCE_SYMBOLS"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == values["AIRFLOW_JWT_SECRET"]


def test_airflow_settings_in_compose_are_real_airflow_options() -> None:
    """Every AIRFLOW__SECTION__KEY names an option of the locked Airflow's config template."""
    spec = importlib.util.find_spec("airflow")
    assert spec and spec.submodule_search_locations, "apache-airflow is not installed in the venv"
    template = Path(next(iter(spec.submodule_search_locations)), "config_templates", "config.yml")
    options = yaml.safe_load(template.read_text(encoding="utf-8"))
    used = set(re.findall(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", raw_compose_text()))
    assert used
    unknown = sorted(
        f"{section}__{key}"
        for section, key in used
        if key.lower() not in (options.get(section.lower()) or {}).get("options", {})
    )
    assert not unknown, f"not options of Airflow {lock_versions()['apache-airflow']}: {unknown}"


def _settings_env_names(config: Path) -> set[str]:
    """Env names a pydantic-settings module reads: upper-cased fields, env_prefix, aliases."""
    tree = ast.parse(config.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {ast.unparse(base) for base in node.bases}
        if not any(base.endswith("BaseSettings") for base in bases):
            continue
        prefix = ""
        for statement in node.body:
            if isinstance(statement, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "model_config"
                for target in statement.targets
            ):
                for keyword in getattr(statement.value, "keywords", []):
                    if keyword.arg == "env_prefix" and isinstance(keyword.value, ast.Constant):
                        prefix = str(keyword.value.value)
        for statement in node.body:
            if not isinstance(statement, ast.AnnAssign) or not isinstance(
                statement.target, ast.Name
            ):
                continue
            field = statement.target.id
            if field == "model_config" or "ClassVar" in ast.unparse(statement.annotation):
                continue
            alias = None
            if isinstance(statement.value, ast.Call):
                for keyword in statement.value.keywords:
                    if keyword.arg in {"alias", "validation_alias"} and isinstance(
                        keyword.value, ast.Constant
                    ):
                        alias = str(keyword.value.value)
            names.add((alias or f"{prefix}{field}").upper())
    return names


@pytest.mark.parametrize("app", ["producer_app", "consumer_app"])
def test_every_setting_an_app_reads_is_in_env_example(app: str) -> None:
    config = ROOT / app / "config.py"
    if not config.is_file():
        pytest.skip(f"{app}/config.py does not exist yet; this check turns on when it lands")
    read = _settings_env_names(config)
    assert read, f"{app}/config.py declares no pydantic-settings fields"
    _, documented = read_env_example()
    missing = sorted(read - documented)
    assert not missing, (
        f".env.example does not list these variables read by {app}/config.py: {missing}"
    )


def test_every_setting_the_dags_read_is_in_env_example_and_given_to_airflow() -> None:
    dags = sorted((ROOT / "airflow" / "dags").glob("*.py"))
    read = set().union(*(_settings_env_names(dag) for dag in dags)) if dags else set()
    if not read:
        pytest.skip("no DAG with a pydantic-settings class yet; this check turns on when one lands")
    _, documented = read_env_example()
    assert not sorted(read - documented), (
        f".env.example lacks DAG settings {sorted(read - documented)}"
    )
    compose = load_compose()["services"]
    for name in ("airflow-scheduler", "airflow-dag-processor"):
        missing = sorted(read - set(environment(compose[name])))
        assert not missing, f"{name} does not pass the DAG settings {missing}"


@pytest.mark.parametrize(
    ("module", "class_name"),
    [("producer_app.config", "ProducerSettings"), ("consumer_app.config", "ConsumerSettings")],
    ids=["producer", "consumer"],
)
def test_env_example_values_equal_the_apps_own_defaults(
    module: str, class_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh .env changes no default; the defaults .env.example documents are the real ones."""
    if not (ROOT / Path(*module.split("."))).with_suffix(".py").is_file():
        pytest.skip(f"{module} does not exist yet")
    monkeypatch.syspath_prepend(str(ROOT))
    settings_class = getattr(importlib.import_module(module), class_name)
    values, _ = read_env_example()
    names = _settings_env_names((ROOT / Path(*module.split("."))).with_suffix(".py"))
    for name in names:
        monkeypatch.delenv(name, raising=False)
    defaults = settings_class(_env_file=None)
    # Active lines and the defaults documented on commented-out lines alike.
    documented_values = {**read_env_example_optional(), **values}
    for name in names & set(documented_values):
        if name in SECRET_VARIABLES:
            continue
        monkeypatch.setenv(name, documented_values[name])
    from_env_example = settings_class(_env_file=None)
    differing = {
        field: (getattr(defaults, field), getattr(from_env_example, field))
        for field in type(defaults).model_fields
        if getattr(defaults, field) != getattr(from_env_example, field)
    }
    assert not differing, f"{class_name}: .env.example changes these defaults: {differing}"


# ----------------------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_bases_are_pinned_and_the_lock_is_used(dockerfile: Path) -> None:
    assert dockerfile.is_file()
    text = dockerfile.read_text(encoding="utf-8")
    bases = dockerfile_from_lines(dockerfile)
    assert bases, "no FROM line"
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", text, re.MULTILINE | re.IGNORECASE))
    for image in bases:
        if image in stages:
            continue
        assert "$" not in image, (
            f"FROM {image}: resolve the image in the Dockerfile, not through ARG"
        )
        _, tag = image_tag(image)
        assert tag and tag != "latest" and re.search(r"\d", tag), (
            f"FROM {image} is not pinned to a version"
        )
    assert "requirements/requirements.lock" in text


@pytest.mark.parametrize(
    ("dockerfile", "app", "other_app", "port"),
    [
        (PRODUCER_DOCKERFILE, "producer_app", "consumer_app", "9108"),
        (CONSUMER_DOCKERFILE, "consumer_app", "producer_app", "9109"),
    ],
    ids=["producer", "consumer"],
)
def test_app_dockerfiles_copy_only_their_app_run_unprivileged_and_check_health(
    dockerfile: Path, app: str, other_app: str, port: str
) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    copies = re.findall(r"^COPY (?!--from)(.*)$", text, re.MULTILINE)
    sources = {part for line in copies for part in line.split()[:-1] if not part.startswith("--")}
    assert sources <= {"requirements/requirements.lock", "pom.xml", f"{app}/"}, sources
    assert f"{app}/" in sources and f"{other_app}/" not in sources
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0", "0:0"}, "the final stage must not run as root"
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.*)$", text, re.MULTILINE | re.DOTALL)
    assert healthcheck and "/metrics" in healthcheck.group(1) and port in text
    assert re.search(rf'^CMD \["python", "-m", "{app}"\]', text, re.MULTILINE)


def _third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level modules imported by a package that are neither stdlib nor the repo's own."""
    local = {
        path.name
        for path in ROOT.iterdir()
        if (path / "__init__.py").is_file() or path.suffix == ".py"
    }
    found: dict[str, set[str]] = {}
    for source in package.rglob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            for module in modules:
                top = module.split(".")[0]
                if (
                    top in sys.stdlib_module_names
                    or top == "__future__"
                    or f"{top}.py" in local
                    or top in local
                ):
                    continue
                found.setdefault(module, set()).add(str(source.relative_to(ROOT)))
    return found


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions_of(module: str) -> set[str]:
    top = module.split(".")[0]
    return {normalize(name) for name in _packages_distributions().get(top, [])}


@pytest.mark.parametrize(
    ("app", "dockerfile"),
    [("producer_app", PRODUCER_DOCKERFILE), ("consumer_app", CONSUMER_DOCKERFILE)],
    ids=["producer", "consumer"],
)
def test_app_images_install_every_distribution_their_code_imports(
    app: str, dockerfile: Path
) -> None:
    package = ROOT / app
    if not any(package.glob("*.py")):
        pytest.skip(f"{app}/ has no Python modules yet; this check turns on when they land")
    installed = {normalize(name) for name in dockerfile_arg(dockerfile, "PYTHON_PACKAGES")}
    pins = lock_versions()
    assert installed <= set(pins), (
        f"{dockerfile.name} installs packages the lock does not pin: {installed - set(pins)}"
    )
    imports = _third_party_imports(package)
    other = "consumer_app" if app == "producer_app" else "producer_app"
    own_imports_of_other = [
        source
        for source in package.rglob("*.py")
        if re.search(
            rf"^\s*(from|import) {other}\b", source.read_text(encoding="utf-8"), re.MULTILINE
        )
    ]
    assert not own_imports_of_other, f"{app} imports {other}, which its image does not contain"
    missing = {}
    for module, where in imports.items():
        distributions = _distributions_of(module)
        assert distributions, f"{module} (imported in {sorted(where)}) is not installed in the venv"
        if not distributions & installed:
            missing[module] = sorted(distributions)
    assert not missing, (
        f"{dockerfile.relative_to(ROOT)} PYTHON_PACKAGES lacks the distributions of {missing}"
    )


def test_airflow_image_installs_what_the_dags_import() -> None:
    dags = ROOT / "airflow" / "dags"
    if not any(dags.glob("*.py")):
        pytest.skip("airflow/dags/ has no DAG yet; this check turns on when it lands")
    installed = {normalize(name) for name in dockerfile_arg(AIRFLOW_DOCKERFILE, "AIRFLOW_PACKAGES")}
    missing = {}
    for module, where in _third_party_imports(dags).items():
        if module.startswith("airflow.providers."):
            provider = module.split(".")[2]
            needed = {normalize(f"apache-airflow-providers-{provider}")}
        elif module.split(".")[0] == "airflow":
            continue  # airflow core and the task SDK: the image itself, at the lock's version
        else:
            needed = _distributions_of(module)
        if not needed & installed:
            missing[module] = (sorted(needed), sorted(where))
    assert not missing, f"airflow/Dockerfile AIRFLOW_PACKAGES lacks {missing}"


def test_dockerignore_keeps_secrets_and_local_data_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".env", ".venv", ".local", ".git"} <= ignored


# ------------------------------------------------------------------ docker compose itself
def _docker_compose() -> str | None:
    """Path of the docker CLI when its `compose` plugin answers, else None."""
    docker = shutil.which("docker")
    if docker is None or run_tool(docker, "compose", "version").returncode != 0:
        return None
    return docker


def test_docker_compose_config_validates_the_file() -> None:
    docker = _docker_compose()
    if docker is None:
        pytest.skip("the `docker compose` CLI plugin is not installed; the static checks still ran")
    base = ("compose", "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE))
    result = run_tool(docker, *base, "config", "-q")
    assert result.returncode == 0, result.stderr
    profiles = run_tool(docker, *base, "--profile", "demo", "config", "--services")
    assert profiles.returncode == 0, profiles.stderr
    listed = set(profiles.stdout.split())
    assert set().union(*LOCAL_STACK_SERVICES.values()) | {"replay", "producer-demo"} <= listed


def iter_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from iter_strings(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from iter_strings(item)


def test_no_service_binds_a_published_port_to_all_interfaces() -> None:
    for text in iter_strings(resolved_compose()["services"]):
        assert not re.match(r"^0\.0\.0\.0:\d+:\d+$", text), text
