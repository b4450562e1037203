"""Shared pytest fixtures: the real local services (PostgreSQL, Redis, Kafka) and Spark jars.

The services are the ones `make services` (scripts/stack.sh) runs from .local/, or any servers the
environment points at. Settings come from the environment, then from .env at the repository root,
then from the defaults in docs/architecture.md. A fixture whose service is down fails (never skips)
with a message naming the service and `make services`.

Fixtures:
    pg_admin_dsn (session)  superuser conninfo of the server's `postgres` maintenance database
    pg_dsn (function)       conninfo of a FRESH database with init.sql applied, dropped afterwards
    redis_url (session)     redis://host:port/db ;  redis_prefix (function): unique key prefix
    kafka_bootstrap (session), make_topic (function): make_topic(partitions=6) -> unique topic name
    spark_jars (session)    comma-separated Kafka connector jar paths for spark.jars
    stack_env (session)     the resolved settings as environment variables (for subprocesses)
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / ".local"
INIT_SQL = ROOT / "init.sql"
TEST_DB_PREFIX = "pytest_"

# py4j logs "Closing down clientserver connection" from a finalizer at interpreter exit,
# after pytest closed its capture streams: a traceback under the test summary, nothing else.
logging.getLogger("py4j").setLevel(logging.WARNING)

DEFAULTS: dict[str, str] = {
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_PORT": "5432",
    "POSTGRES_DB": "crypto",
    "POSTGRES_USER": "pipeline",
    "REDIS_HOST": "127.0.0.1",
    "REDIS_PORT": "6379",
    "REDIS_DB": "0",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
}

HOW_TO_START = (
    "start the local services with `make services` (or point the *_HOST/*_PORT settings at yours)"
)


def _read_dotenv(path: Path) -> dict[str, str]:
    """KEY=value lines of .env; comments and blank lines ignored, surrounding quotes dropped."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.split(" #", 1)[0].strip().strip("'\"")
        values[key.strip()] = value
    return values


def _settings() -> dict[str, str]:
    merged = dict(DEFAULTS)
    merged.update(_read_dotenv(ROOT / ".env"))
    merged.update({k: v for k, v in os.environ.items() if k in merged or k.startswith("POSTGRES_")})
    return merged


SETTINGS = _settings()


def _conninfo(**params: str) -> str:
    return psycopg.conninfo.make_conninfo(**params)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The resolved connection settings, to pass to subprocesses (consumer, producer)."""
    return dict(SETTINGS)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> str:
    """Superuser conninfo of the `postgres` maintenance database.

    POSTGRES_ADMIN_DSN wins when set; otherwise the local stack's private unix socket
    (.local/run/postgres, reachable by root and postgres only) as user postgres.
    """
    dsn = os.environ.get("POSTGRES_ADMIN_DSN") or _read_dotenv(ROOT / ".env").get(
        "POSTGRES_ADMIN_DSN", ""
    )
    if not dsn:
        dsn = _conninfo(
            host=str(LOCAL / "run" / "postgres"),
            port=SETTINGS["POSTGRES_PORT"],
            dbname="postgres",
            user="postgres",
        )
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as err:
        pytest.fail(
            f"PostgreSQL is not reachable as superuser ({dsn}): {err}; {HOW_TO_START}",
            pytrace=False,
        )
    _drop_orphan_test_databases(dsn)
    return dsn


def _drop_orphan_test_databases(admin_dsn: str) -> None:
    """Drops pytest_<pid>_* databases left by sessions that died before their teardown."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "select datname from pg_database where datname like %s",
                (TEST_DB_PREFIX + "%",),
            )
        ]
        for name in names:
            parts = name.split("_")
            if len(parts) >= 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )


def _owner_dsn(dbname: str) -> str:
    return _conninfo(
        host=SETTINGS["POSTGRES_HOST"],
        port=SETTINGS["POSTGRES_PORT"],
        dbname=dbname,
        user=SETTINGS["POSTGRES_USER"],
        password=SETTINGS.get("POSTGRES_PASSWORD", ""),
    )


@pytest.fixture(scope="session")
def _pg_template(pg_admin_dsn: str) -> Iterator[str]:
    """A database with init.sql applied once per session; pg_dsn copies it (fast) per test."""
    owner = SETTINGS["POSTGRES_USER"]
    name = f"{TEST_DB_PREFIX}{os.getpid()}_tmpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        role = conn.execute("select 1 from pg_roles where rolname = %s", (owner,)).fetchone()
        if role is None:
            pytest.fail(f"PostgreSQL role {owner} does not exist; {HOW_TO_START}", pytrace=False)
        conn.execute(
            sql.SQL("create database {} owner {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
    try:
        # init.sql runs as the owner role, like scripts/stack.sh does, so the pipeline user
        # owns the tables exactly as in the real database.
        admin_to_template = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=name)
        with psycopg.connect(admin_to_template, autocommit=True) as conn:
            conn.execute(sql.SQL("set role {}").format(sql.Identifier(owner)))
            if INIT_SQL.is_file():
                conn.execute(INIT_SQL.read_text())  # a trusted repository file, not user input
        yield name
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_dsn(pg_admin_dsn: str, _pg_template: str) -> Iterator[str]:
    """Conninfo (as POSTGRES_USER) of a fresh database with init.sql applied; dropped afterwards."""
    name = f"{TEST_DB_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create database {} template {} owner {}").format(
                sql.Identifier(name),
                sql.Identifier(_pg_template),
                sql.Identifier(SETTINGS["POSTGRES_USER"]),
            )
        )
    dsn = _owner_dsn(name)
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as err:
        pytest.fail(
            f"PostgreSQL refused {SETTINGS['POSTGRES_USER']} on database {name}: {err}; "
            "check POSTGRES_PASSWORD in .env and rerun `make services`",
            pytrace=False,
        )
    try:
        yield dsn
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


# ----------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = f"redis://{SETTINGS['REDIS_HOST']}:{SETTINGS['REDIS_PORT']}/{SETTINGS['REDIS_DB']}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as err:
        pytest.fail(f"Redis is not reachable at {url}: {err}; {HOW_TO_START}", pytrace=False)
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix; every key under it is deleted after the test."""
    import redis

    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# ----------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = SETTINGS["KAFKA_BOOTSTRAP_SERVERS"]
    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(
            timeout=5
        )
    except KafkaException as err:
        pytest.fail(f"Kafka is not reachable at {bootstrap}: {err}; {HOW_TO_START}", pytrace=False)
    if not metadata.brokers:
        pytest.fail(f"Kafka at {bootstrap} has no broker; {HOW_TO_START}", pytrace=False)
    return bootstrap


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory make_topic(partitions=6) -> name of a new, unique topic; deleted afterwards."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    client = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
    created: list[str] = []

    def _make(partitions: int = 6) -> str:
        name = f"test.{uuid.uuid4().hex[:12]}"
        futures = client.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=30,
        )
        futures[name].result(timeout=30)
        created.append(name)
        # Wait until the broker's metadata shows every partition with a leader.
        for _ in range(100):
            topic = client.list_topics(name, timeout=5).topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and len(topic.partitions) == partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                break
            time.sleep(0.1)
        return name

    yield _make
    if created:
        for future in client.delete_topics(created, operation_timeout=30).values():
            try:
                future.result(timeout=30)
            except KafkaException as err:  # cleanup must not mask the test's own result
                print(f"make_topic cleanup: {err}")


# ----------------------------------------------------------------------------- Spark


@pytest.fixture(scope="session")
def spark_jars() -> str:
    """Comma-separated Kafka connector jar paths: SPARK_JARS when set, else .local/jars/spark."""
    configured = os.environ.get("SPARK_JARS", "")
    jars = [j for j in configured.split(",") if j] or sorted(
        str(p) for p in (LOCAL / "jars" / "spark").glob("*.jar")
    )
    missing = [j for j in jars if not Path(j).is_file()]
    if not jars or missing:
        pytest.fail(
            "the Spark Kafka connector jars are missing "
            f"({'; '.join(missing) or LOCAL / 'jars' / 'spark'}); fetch them with `make services`",
            pytrace=False,
        )
    if not any("spark-sql-kafka" in Path(j).name for j in jars):
        pytest.fail(
            "spark-sql-kafka-0-10 is not among the Spark jars; fetch them with `make services`",
            pytrace=False,
        )
    return ",".join(jars)


# ----------------------------------------------------------------------------- markers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Safety net: a test under tests/<layer>/ carries that layer's marker even if unmarked."""
    for item in items:
        try:
            layer = Path(str(item.fspath)).relative_to(ROOT).parts[1:2]
        except ValueError:
            continue
        if layer and layer[0] in {"unit", "integration", "e2e"}:
            if item.get_closest_marker(layer[0]) is None:
                item.add_marker(getattr(pytest.mark, layer[0]))
