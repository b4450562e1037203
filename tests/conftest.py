"""Shared pytest fixtures: the real local services (PostgreSQL, Redis, Kafka) and Spark jars.

The services are the ones `make services` (scripts/stack.sh) runs from .local/, or any servers the
environment points at. Settings come from the environment, then from .env at the repository root,
then from the defaults in docs/architecture.md. A fixture whose service is down fails (never skips)
with a message naming the service and `make services`.

Fixtures:
    pg_admin_dsn (session)  superuser conninfo of the server's `postgres` maintenance database
    pg_dsn (function)       conninfo of a FRESH database with init.sql applied, dropped afterwards
    redis_url (session)     redis://:password@host:port/db; redis_prefix (function): key prefix
    kafka_bootstrap (session), make_topic (function): make_topic(partitions=6) -> unique topic name
    spark_jars (session)    comma-separated Kafka connector jar paths for spark.jars
    private_kafka (function) a throw-away broker of our own (PrivateKafka), for freeze drills
    spark (session)         a local SparkSession for unit tests of the consumer's transforms
    stack_env (session)     the resolved settings as environment variables (for subprocesses)
    spark_cluster (session) a Spark standalone master + worker on loopback (tests/spark_cluster.py)
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

pytest_plugins = ("spark_cluster",)

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
    """KEY=value lines of .env, read as scripts/stack.sh and docker compose read them.

    python-dotenv without interpolation: "double quoted" (backslash escapes), 'single quoted'
    (literal), bare values end at a " #" comment; tests/unit/test_stack_files.py checks that
    the stack's own reader agrees.
    """
    from dotenv import dotenv_values

    if not path.is_file():
        return {}
    return {k: v or "" for k, v in dotenv_values(path, interpolate=False).items()}


def _settings() -> dict[str, str]:
    merged = dict(DEFAULTS)
    merged.update(_read_dotenv(ROOT / ".env"))
    merged.update(
        {
            k: v
            for k, v in os.environ.items()
            if k in merged or k.startswith(("POSTGRES_", "PIPELINE_", "REDIS_"))
        }
    )
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

    where = f"{SETTINGS['REDIS_HOST']}:{SETTINGS['REDIS_PORT']}/{SETTINGS['REDIS_DB']}"
    password = SETTINGS.get("REDIS_PASSWORD", "")
    # redis-py percent-decodes the URL's password, so any character survives
    url = f"redis://:{quote(password, safe='')}@{where}" if password else f"redis://{where}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.AuthenticationError as err:
        pytest.fail(
            f"Redis at {where} refused REDIS_PASSWORD from .env: {err}; rerun `make services`",
            pytrace=False,
        )
    except redis.RedisError as err:
        pytest.fail(f"Redis is not reachable at {where}: {err}; {HOW_TO_START}", pytrace=False)
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


# ----------------------------------------------------------------------------- private Kafka
# A throw-away single-node KRaft broker, for drills that freeze or kill the broker: its pid is
# ours alone, so SIGSTOP cannot disturb the stack's broker or another session's tests.


def _ephemeral_port() -> int:
    """A port the kernel just handed out as free (ephemeral range: no service is set up there)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateKafka:
    """A Kafka broker + controller in `directory`, started from the stack's broker jars."""

    def __init__(self, directory: Path, jars: Path) -> None:
        self.directory = directory
        self.jars = jars
        self.port = _ephemeral_port()
        self.controller_port = _ephemeral_port()
        self.log_path = directory / "kafka.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, *args: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp",
            f"{self.jars}/*",
            *args,
        ]

    def start(self, timeout: float = 120) -> None:
        import base64

        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        properties = self.directory / "server.properties"
        properties.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.directory / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "",
                ]
            )
        )
        (self.directory / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.console.type = Console\n"
            "appender.console.name = STDOUT\n"
            "appender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = [%d{ISO8601}{UTC}] %p %m (%c)%n\n"
            "rootLogger.level = WARN\n"
            "rootLogger.appenderRef.stdout.ref = STDOUT\n"
        )
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        with self.log_path.open("ab") as log:
            subprocess.run(  # noqa: S603 - fixed arguments, our own files
                self._java(
                    "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=timeout,
            )
            self.process = subprocess.Popen(  # noqa: S603 - fixed arguments, our own files
                self._java("kafka.Kafka", str(properties)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except KafkaException:
                pass
            time.sleep(0.5)
        log_tail = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        pytest.fail(f"the private Kafka broker did not start; its log:\n{log_tail}", pytrace=False)

    def freeze(self) -> None:
        """SIGSTOP the broker: its sockets stay open and nothing answers (a hung broker)."""
        assert self.process is not None  # noqa: S101 - start() ran
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None  # noqa: S101 - start() ran
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()  # a stopped JVM cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture
def private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    """A fresh single-node broker on kernel-chosen ports, stopped (and thawed) afterwards."""
    jars = LOCAL / "jars" / "kafka"
    if not any(jars.glob("kafka_*.jar")):
        pytest.fail(f"the Kafka broker jars are missing in {jars}; {HOW_TO_START}", pytrace=False)
    broker = PrivateKafka(tmp_path_factory.mktemp("private_kafka"), jars)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# ----------------------------------------------------------------------------- local Spark
@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local SparkSession for the consumer's unit tests of pure transforms.

    local[2], UTC, two shuffle partitions, no UI, and the optimizer setting of the consumer
    job (consumer_app.job.build_spark) so the plans match. Session scope: it takes seconds
    to start, and the transform and fuzz tests share it.
    """
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("consumer_unit_tests")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.optimizer.enableJsonExpressionOptimization", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
