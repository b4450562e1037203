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
import gzip
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
DEMO_FILE = ROOT / "docker-compose.demo.yaml"
STANDINS = ROOT / "docker" / "standins"
ENV_EXAMPLE = ROOT / ".env.example"
LOCK_FILE = ROOT / "requirements" / "requirements.lock"
POM_FILE = ROOT / "pom.xml"
STACK_SCRIPT = ROOT / "scripts" / "stack.sh"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

PRODUCER_DOCKERFILE = ROOT / "producer_app" / "Dockerfile"
CONSUMER_DOCKERFILE = ROOT / "consumer_app" / "Dockerfile"
AIRFLOW_DOCKERFILE = ROOT / "airflow" / "Dockerfile"
DOCKERFILES = (PRODUCER_DOCKERFILE, CONSUMER_DOCKERFILE, AIRFLOW_DOCKERFILE)
#: ... and the monitoring images' (tests/unit/test_dashboard_image.py checks their contents).
MONITORING_DOCKERFILES = (
    ROOT / "dashboard" / "Dockerfile",
    ROOT / "prometheus" / "exporters.Dockerfile",
)
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus-compose.yml"

#: Variables that hold secrets: referenced only as ${VAR:?message} and shipped as placeholders.
SECRET_VARIABLES = (
    "POSTGRES_PASSWORD",
    "PIPELINE_WRITER_PASSWORD",
    "PIPELINE_DAG_PASSWORD",
    "PIPELINE_ANALYST_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_FERNET_KEY",
)
#: The secrets each service may receive (least privilege, docs/architecture.md roles).
AIRFLOW_SECRETS = {"AIRFLOW_FERNET_KEY", "AIRFLOW_DB_PASSWORD", "AIRFLOW_JWT_SECRET"}
SECRETS_OF = {
    "postgres": {"POSTGRES_PASSWORD"},
    "db-migrate": {
        "POSTGRES_PASSWORD",
        "PIPELINE_WRITER_PASSWORD",
        "PIPELINE_DAG_PASSWORD",
        "PIPELINE_ANALYST_PASSWORD",
        "AIRFLOW_DB_PASSWORD",
    },
    "redis": {"REDIS_PASSWORD"},
    "consumer": {"PIPELINE_WRITER_PASSWORD", "REDIS_PASSWORD"},
    "airflow-init": AIRFLOW_SECRETS | {"AIRFLOW_ADMIN_PASSWORD", "PIPELINE_DAG_PASSWORD"},
    "airflow-api-server": AIRFLOW_SECRETS,
    "airflow-scheduler": AIRFLOW_SECRETS,
    "airflow-dag-processor": AIRFLOW_SECRETS,
    # the monitoring: the read-only analyst, and Redis' password for its exporter
    "postgres-exporter": {"PIPELINE_ANALYST_PASSWORD"},
    "redis-exporter": {"REDIS_PASSWORD"},
    "dashboard": {"PIPELINE_ANALYST_PASSWORD"},
}

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
ONE_SHOT_SERVICES = {"db-migrate", "kafka-init", "airflow-init"}

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
    """Both compose files: the stack and its demo override."""
    return COMPOSE_FILE.read_text(encoding="utf-8") + DEMO_FILE.read_text(encoding="utf-8")


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path.name} is not a mapping"
    return document


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for what these files use: mappings merge key by
    key, anything else (command, lists) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def demo_compose() -> dict[str, Any]:
    """docker-compose.yaml with docker-compose.demo.yaml on top, as `-f a -f b` merges them."""
    return merge(load_compose(), load_compose(DEMO_FILE))


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


#: Secrets .env.example leaves empty (the stack generates them): compose refuses an empty one.
EMPTY_SECRETS = {"AIRFLOW_FERNET_KEY"}


def env_example_with_secrets() -> dict[str, str]:
    """.env.example's values, an empty secret given a stand-in value as dotenv would."""
    values, _ = read_env_example()
    return {**values, **{name: "generated-" + name for name in EMPTY_SECRETS if not values[name]}}


def resolved_compose() -> dict[str, Any]:
    return resolve(load_compose(), env_example_with_secrets())


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
        if name in EMPTY_SECRETS:
            assert values.get(name) == "", f"{name}: .env.example leaves it empty (generated)"
            continue
        assert "change-me" in values.get(name, ""), (
            f".env.example must ship {name} as a change-me placeholder"
        )


def test_compose_fails_with_a_message_when_a_secret_is_missing() -> None:
    values = env_example_with_secrets()
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
        "dashboard": (values["DASHBOARD_PORT"], "8501"),
        "prometheus": (values["PROMETHEUS_PORT"], "9090"),
    }
    for name, (host_port, container_port) in expected.items():
        assert f"127.0.0.1:{host_port}:{container_port}" in compose[name]["ports"], name
    assert values["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1] == values["KAFKA_PORT"]


def test_init_sql_reaches_an_existing_volume_through_db_migrate() -> None:
    """init.sql runs on every start (db-migrate), not only on an empty volume (initdb)."""
    assert (ROOT / "init.sql").is_file()
    compose = services()
    postgres_mounts = [v for v in compose["postgres"].get("volumes", []) if isinstance(v, str)]
    assert not [v for v in postgres_mounts if "/docker-entrypoint-initdb.d" in v], (
        "initdb scripts run on an empty volume only: apply the schema in db-migrate"
    )
    migrate = compose["db-migrate"]
    assert migrate["image"] == compose["postgres"]["image"], "psql of the same server version"
    assert "./init.sql:/migrations/init.sql:ro" in migrate["volumes"]
    script = "\n".join(migrate["command"])
    assert "-f /migrations/init.sql" in script and "ON_ERROR_STOP=1" in script
    for dependent in ("consumer", "airflow-init"):
        assert compose[dependent]["depends_on"]["db-migrate"] == {
            "condition": "service_completed_successfully"
        }, dependent


def test_db_migrate_gives_every_role_its_login_from_psql_variables() -> None:
    """The login roles of docs/architecture.md get their .env passwords as psql variables
    (:'var' quoting, so any character works), and `airflow` owns the metadata database."""
    migrate = services()["db-migrate"]
    script = "\n".join(migrate["command"])
    env = environment(migrate)
    for role, variable in (
        ("pipeline_writer", "PIPELINE_WRITER_PASSWORD"),
        ("pipeline_dag", "PIPELINE_DAG_PASSWORD"),
        ("pipeline_analyst", "PIPELINE_ANALYST_PASSWORD"),
        ("airflow", "AIRFLOW_DB_PASSWORD"),
    ):
        psql_variable = re.search(rf'-v (\w+)="\$\${variable}"', script)
        assert psql_variable, f"{variable} is not handed to psql as a variable"
        assert f"alter role {role} with login password :'{psql_variable.group(1)}';" in script
        assert env[variable] == f"${{{variable}:?set {variable} in .env}}"
    assert "create database airflow owner airflow" in script
    assert migrate.get("restart") == "no"


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
    # include: the local password file (requirepass REDIS_PASSWORD); compose passes --requirepass
    "redis.conf": {"bind", "protected-mode", "port", "dir", "daemonize", "include"},
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
    # The password (compose only, so far) aside, the settings are the local redis.conf's.
    assert command[-2:] == ["--requirepass", "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"]
    command = command[:-2]
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
        match.group(1): (int(match.group(2)), bool(match.group(3)))
        for match in re.finditer(
            r"--topic (\S+) --partitions (\d+)( --config cleanup\.policy=compact)?", command
        )
    }
    stack = STACK_SCRIPT.read_text(encoding="utf-8")
    local_specs = re.findall(
        r'"\$(KAFKA_TOPIC_[A-Z]+):(\$KAFKA_TOPIC_PARTITIONS|\d+)(:compact)?"', stack
    )
    assert local_specs, 'scripts/stack.sh: no ensure-topics "$KAFKA_TOPIC_X:N" arguments found'
    expected = {
        values[variable]: (
            int(values["KAFKA_TOPIC_PARTITIONS"]) if count.startswith("$") else int(count),
            bool(compact),
        )
        for variable, count, compact in local_specs
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
    for name in ("producer", "consumer"):
        assert environment(compose[name])["KAFKA_BOOTSTRAP_SERVERS"] == in_network, name
    env = environment(compose["consumer"])
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("postgres", "5432")
    assert (env["REDIS_HOST"], env["REDIS_PORT"]) == ("redis", "6379")
    assert env["POSTGRES_DB"] == values["POSTGRES_DB"]
    # Its own least-privileged role, not the owner (docs/architecture.md).
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == (
        "pipeline_writer",
        values["PIPELINE_WRITER_PASSWORD"],
    )
    assert env["REDIS_PASSWORD"] == values["REDIS_PASSWORD"]
    assert environment(compose["producer"])["PRODUCER_METRICS_PORT"] == "9108"
    assert environment(compose["consumer"])["CONSUMER_METRICS_PORT"] == "9109"


@pytest.mark.parametrize(
    ("app", "prefix", "names"),
    [
        ("producer_app", "PRODUCER_", ("producer",)),
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
    merged = demo_compose()["services"]
    for name, service in merged.items():
        used = set(variables_used(json.dumps(service))) & set(SECRET_VARIABLES)
        extra = sorted(used - SECRETS_OF.get(name, set()))
        assert not extra, f"{name} receives secrets it does not use: {extra}"
        assert "env_file" not in service, f"{name}: env_file would hand it every secret of .env"
    assert "AIRFLOW_CONN_PIPELINE_POSTGRES" not in raw_compose_text(), (
        "the DAG's connection lives in the metadata DB (airflow-init), encrypted"
    )


def test_airflow_services_share_one_image_the_dags_and_the_connection() -> None:
    compose = resolved_compose()["services"]
    values, _ = read_env_example()
    airflow = LOCAL_STACK_SERVICES["Airflow"]
    assert len({compose[name]["image"] for name in airflow}) == 1
    init_command = "\n".join(compose["airflow-init"]["command"])
    assert "airflow db migrate" in init_command
    # The DAG's connection: role pipeline_dag, stored (Fernet-encrypted) by airflow-init.
    assert 'conn_id="pipeline_postgres"' in init_command and 'login="pipeline_dag"' in init_command
    assert 'password=os.environ["PIPELINE_DAG_PASSWORD"]' in init_command
    assert compose["airflow-api-server"]["command"] == "api-server"
    assert compose["airflow-scheduler"]["command"] == "scheduler"
    assert compose["airflow-dag-processor"]["command"] == "dag-processor"
    for name in airflow - {"airflow-init"}:
        env = environment(compose[name])
        assert "./airflow/dags:/opt/airflow/dags:ro" in compose[name]["volumes"], name
        assert compose[name]["user"] == f"{values['AIRFLOW_UID']}:0", name
        # The metadata DB as role airflow; the URL percent-encodes the password in the container.
        conn_cmd = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"]
        assert "postgresql+psycopg2://airflow:" in conn_cmd and "@postgres:5432/airflow" in conn_cmd
        assert 'u.quote(os.environ["AIRFLOW_DB_PASSWORD"], safe="")' in conn_cmd
        assert env["RAW_RETENTION_DAYS"] == values["RAW_RETENTION_DAYS"]
        assert env["BINANCE_SYMBOLS"] == values["BINANCE_SYMBOLS"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == values["AIRFLOW_JWT_SECRET"]
        assert env["AIRFLOW__CORE__FERNET_KEY"] == env_example_with_secrets()["AIRFLOW_FERNET_KEY"]
        assert not {"POSTGRES_USER", "POSTGRES_PASSWORD"} & set(env), f"{name}: owner login"


def test_airflow_settings_in_compose_are_real_airflow_options() -> None:
    """Every AIRFLOW__SECTION__KEY names an option of the locked Airflow's config template."""
    spec = importlib.util.find_spec("airflow")
    assert spec and spec.submodule_search_locations, "apache-airflow is not installed in the venv"
    template = Path(next(iter(spec.submodule_search_locations)), "config_templates", "config.yml")
    options = yaml.safe_load(template.read_text(encoding="utf-8"))
    used = set(re.findall(r"AIRFLOW__([A-Z0-9_]+?)__([A-Z0-9_]+)", raw_compose_text()))
    assert used

    def known(section: str, key: str) -> bool:
        section_options = (options.get(section.lower()) or {}).get("options", {})
        # OPTION_CMD / OPTION_SECRET: the value comes from a command (sensitive options).
        base = re.sub(r"_(CMD|SECRET)$", "", key)
        return key.lower() in section_options or (base != key and base.lower() in section_options)

    unknown = sorted(f"{section}__{key}" for section, key in used if not known(section, key))
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
        if name in SECRET_VARIABLES or documented_values[name].startswith("change-me"):
            continue  # a placeholder secret is not a default
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
        elif (dags / module.split(".")[0]).is_dir():
            continue  # a helper package beside the DAGs (airflow/dags/warehouse_checks/)
        else:
            needed = _distributions_of(module)
        if not needed & installed:
            missing[module] = (sorted(needed), sorted(where))
    assert not missing, f"airflow/Dockerfile AIRFLOW_PACKAGES lacks {missing}"


def test_dockerignore_keeps_secrets_and_local_data_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".env", ".venv", ".local", ".git"} <= ignored


# ------------------------------------------------------------------ docker compose itself
def _docker_compose() -> list[str] | None:
    """The compose CLI: the `docker compose` plugin, or the one scripts/docker-engine.sh built."""
    docker = shutil.which("docker")
    if docker is not None and run_tool(docker, "compose", "version").returncode == 0:
        return [docker, "compose"]
    built = ROOT / ".local" / "docker" / "bin" / "docker-compose"
    return [str(built)] if built.is_file() else None


def test_docker_compose_config_validates_the_file(tmp_path: Path) -> None:
    compose = _docker_compose()
    if compose is None:
        pytest.skip("no Docker Compose CLI installed; the static checks still ran")
    env_file = tmp_path / "example.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env_example_with_secrets().items()))
    base = ("--env-file", str(env_file), "-f", str(COMPOSE_FILE))
    result = run_tool(*compose, *base, "config", "-q")
    assert result.returncode == 0, result.stderr
    demo = run_tool(*compose, *base, "-f", str(DEMO_FILE), "config", "--format", "json")
    assert demo.returncode == 0, demo.stderr
    listed = set(json.loads(demo.stdout)["services"])
    assert set().union(*LOCAL_STACK_SERVICES.values()) | {"replay", "db-migrate"} <= listed
    # What compose itself merges agrees with this file's reading of the demo.
    merged = json.loads(demo.stdout)["services"]
    assert merged["producer"]["environment"]["BINANCE_WS_URL"] == "ws://replay:9443"
    assert merged["airflow-scheduler"]["environment"]["BINANCE_SYMBOLS"] == "BTCUSDT"


# ------------------------------------------------------------------ the demo (issue 15 fixes)
def recording_symbols(path: Path) -> set[str]:
    with gzip.open(path, "rt", encoding="utf-8") as frames:
        return {json.loads(line)["data"]["s"].upper() for line in frames if line.strip()}


def test_the_demo_expects_the_symbols_its_recording_holds() -> None:
    """Producer and Airflow (the DAG's expected symbols and REST endpoint) get the replay."""
    values, _ = read_env_example()
    assert recording_symbols(ROOT / values["DEMO_RECORDING"]) == set(
        values["DEMO_SYMBOLS"].split(",")
    ), "DEMO_SYMBOLS of .env.example must be the bundled recording's symbols"
    merged = resolve(demo_compose(), env_example_with_secrets())["services"]
    for name in ("producer", "airflow-scheduler", "airflow-dag-processor"):
        env = environment(merged[name])
        assert env["BINANCE_SYMBOLS"] == values["DEMO_SYMBOLS"], name
        assert env["BINANCE_REST_URL"] == "http://replay:9443", name
    assert environment(merged["producer"])["BINANCE_WS_URL"] == "ws://replay:9443"
    assert merged["producer"]["depends_on"]["replay"] == {"condition": "service_healthy"}
    # The replay service refuses a DEMO_SYMBOLS that is not its recording's.
    assert "DEMO_SYMBOLS" in "".join(merged["replay"]["command"])


def test_no_two_services_publish_the_same_host_port() -> None:
    """Live and demo: the demo used to run a second producer on the same metrics port."""
    values = env_example_with_secrets()
    for document in (load_compose(), demo_compose()):
        published: dict[str, str] = {}
        for name, service in resolve(document, values)["services"].items():
            for port in service.get("ports", []):
                host = ":".join(str(port).split(":")[:2])
                assert host not in published, f"{name} and {published.get(host)} publish {host}"
                published[host] = name


def test_the_producer_may_drain_before_compose_kills_it() -> None:
    """stop_grace_period > the producer's flush timeout (compose's default is 10 s)."""
    from producer_app.config import ProducerSettings

    flush_s = ProducerSettings.model_fields["producer_flush_timeout_s"].default
    grace = services()["producer"].get("stop_grace_period", "10s")
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, f"stop_grace_period {grace!r}: write it in seconds"
    assert int(match.group(1)) > flush_s + 5, f"{grace} vs PRODUCER_FLUSH_TIMEOUT_S {flush_s}"


# ------------------------------------------------------------------ same-tag stand-ins
def named_images() -> set[str]:
    """Every image the compose files run and the project's Dockerfiles start FROM."""
    images = {
        service["image"]
        for document in (load_compose(), load_compose(DEMO_FILE))
        for service in document["services"].values()
        if "image" in service and "build" not in service
    }
    images |= {
        image
        for path in (*DOCKERFILES, *MONITORING_DOCKERFILES)
        for image in dockerfile_from_lines(path)
    }
    return images


def test_every_image_has_a_same_tag_stand_in() -> None:
    """A folder per image (named after its repository), its bases covered too, and the
    stand-ins README naming each; docker/standins/build.sh builds them when pulls fail."""
    readme = (STANDINS / "README.md").read_text(encoding="utf-8")
    pending = set(named_images())
    seen: set[str] = set()
    while pending:
        image = pending.pop()
        seen.add(image)
        folder = STANDINS / image.split(":")[0].rsplit("/", 1)[-1]
        assert (folder / "Dockerfile").is_file() or (folder / "build.sh").is_file(), image
        assert f"`{image.split(':')[0]}`" in readme, f"docker/standins/README.md: {image}"
        if (folder / "Dockerfile").is_file():
            pending |= set(dockerfile_from_lines(folder / "Dockerfile")) - seen
    assert {"debian:bookworm-slim", "postgres:15.18-bookworm", "apache/kafka:4.1.1"} <= seen


def test_postgres_and_redis_stand_ins_install_the_tag_version() -> None:
    """The Debian package at the compose pin's version, or no image at all."""
    for folder, package in (("postgres", "postgresql-${major}"), ("redis", "redis-server")):
        dockerfile = (STANDINS / folder / "Dockerfile").read_text(encoding="utf-8")
        assert "apt-cache madison" in dockerfile and '-v v="${VERSION}"' in dockerfile, folder
        assert f'"{package}=${{revision}}"' in dockerfile, folder
        assert "exit 1" in dockerfile, f"{folder}: must fail when Debian lacks the version"


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


# ------------------------------------------------------------------ monitoring, DAG, Spark
def pgpass_entries(text: str) -> list[list[str]]:
    """libpq's reading of a password file: five `:`-separated fields a line, `\\` escapes."""
    entries = []
    for line in text.splitlines():
        fields: list[str] = []
        current, chars = "", iter(line)
        for char in chars:
            if char == "\\":
                current += next(chars, "")
            elif char == ":" and len(fields) < 4:
                fields.append(current)
                current = ""
            else:
                current += char
        entries.append([*fields, current])
    return entries


def test_the_dashboard_and_the_exporters_log_in_with_least_privilege() -> None:
    """The dashboard and the PostgreSQL exporter as the read-only analyst (never the owner),
    the Redis exporter with Redis' password; none before db-migrate gave the analyst its login."""
    compose = resolved_compose()["services"]
    values = env_example_with_secrets()
    dashboard = environment(compose["dashboard"])
    assert (dashboard["POSTGRES_USER"], dashboard["POSTGRES_PASSWORD"]) == (
        "pipeline_analyst",
        values["PIPELINE_ANALYST_PASSWORD"],
    )
    exporter = environment(compose["postgres-exporter"])
    dsn = exporter["DATA_SOURCE_NAME"]
    assert dsn.startswith("postgresql://pipeline_analyst@postgres:5432/"), dsn
    assert not {"DATA_SOURCE_PASS", "DATA_SOURCE_USER", "DATA_SOURCE_URI"} & set(exporter), (
        "exporter 0.11 calls a DATA_SOURCE_PASS with quotes or backslashes a malformed dsn"
    )
    assert "export PGPASSFILE=" in "".join(compose["postgres-exporter"]["command"])
    assert environment(compose["redis-exporter"])["REDIS_PASSWORD"] == values["REDIS_PASSWORD"]
    for name in ("dashboard", "postgres-exporter"):
        assert compose[name]["depends_on"]["db-migrate"] == {
            "condition": "service_completed_successfully"
        }, name


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
def test_the_exporters_password_file_carries_any_password(tmp_path: Path) -> None:
    """The PostgreSQL exporter's start script, run by sh with a password holding what libpq's
    password file must escape, writes a file libpq reads back as that very password."""
    password = "an\\alyst q'\" @:/%# :tail\\"  # noqa: S105 - a test value, not a secret
    passfile = tmp_path / "pgpass"
    service = load_compose()["services"]["postgres-exporter"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    script = interpolate(service["command"][0], {}).replace("/tmp/pgpass", str(passfile))  # noqa: S108
    script = re.sub(r"exec prometheus-postgres-exporter.*", 'cat "$PGPASSFILE"', script, flags=re.S)
    result = subprocess.run(  # noqa: S603 - the compose file's own script, fixed arguments
        ["/bin/sh", "-c", script],
        env={"PATH": "/usr/bin:/bin", "PIPELINE_ANALYST_PASSWORD": password},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert pgpass_entries(passfile.read_text()) == [["*", "*", "*", "pipeline_analyst", password]]
    assert passfile.stat().st_mode & 0o077 == 0, "libpq ignores a password file others can read"


def test_prometheus_scrapes_services_of_the_compose_file_on_their_ports() -> None:
    """Each scrape target is a service of the stack (live and demo) on the port it listens on."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    listens = {
        "producer": "9108",
        "consumer": "9109",
        "postgres-exporter": "9187",
        "redis-exporter": "9121",
    }
    for document in (resolved_compose(), resolve(demo_compose(), env_example_with_secrets())):
        names = set(document["services"])
        targets = {
            target
            for job in config["scrape_configs"]
            for static in job.get("static_configs", [])
            for target in static["targets"]
        }
        assert {job["job_name"] for job in config["scrape_configs"]} == {
            "producer", "consumer", "postgres", "redis",
        }  # fmt: skip
        assert all("static_configs" in job for job in config["scrape_configs"]), config
        for target in targets:
            host, port = target.rsplit(":", 1)
            assert host in names, f"{target}: no service {host}"
            assert listens[host] == port, target
        joined = " ".join(iter_strings(document["services"]["producer"]))
        assert "9108" in joined and "9109" in " ".join(
            iter_strings(document["services"]["consumer"])
        )


def test_the_dag_in_compose_follows_the_candles_rules() -> None:
    """No start date of compose's own (the DAG's default: none, no catch-up); the demo has no
    schedule and reconciles with the replay; the REST refill reaches Kafka in the network."""
    base = resolved_compose()["services"]
    demo = resolve(demo_compose(), env_example_with_secrets())["services"]
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-api-server"):
        live, replay = environment(base[name]), environment(demo[name])
        assert live.get("DAILY_SUMMARY_START_DATE", "") == "", f"{name}: a start date"
        assert live.get("DAILY_SUMMARY_SCHEDULE", "") == "", f"{name}: the DAG's own schedule"
        assert replay["DAILY_SUMMARY_SCHEDULE"] == "none", name
        assert replay["BINANCE_REST_URL"] == "http://replay:9443", name
        assert live["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092", name
        assert live["KAFKA_TOPIC_PRICES"] == env_example_with_secrets()["KAFKA_TOPIC_PRICES"]


def test_the_spark_master_takes_no_rest_submissions() -> None:
    """Spark 4.2 starts an unauthenticated submission server on 6066 unless told not to."""
    env = environment(resolved_compose()["services"]["spark-master"])
    assert "-Dspark.master.rest.enabled=false" in env.get("SPARK_MASTER_OPTS", "").split()
