"""Small Kafka admin helper for scripts/stack.sh: readiness ping, topic creation and consumer lag.

Talks to the broker named by KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092) with
confluent-kafka's AdminClient; prints plain text for the shell and exits non-zero on failure.
Lag is computed from the Spark checkpoint's committed offsets (SPARK_CHECKPOINT_DIR/offsets)
against the topic's end offsets, because Spark's Kafka source commits no consumer group.

Usage:
    kafka_admin.py ping [--timeout S]
    kafka_admin.py ensure-topics NAME:PARTITIONS[:compact] ...
    kafka_admin.py delete-topics NAME ...
    kafka_admin.py lag --topic T --checkpoint DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


class KafkaAdminError(Exception):
    """A broker call failed; the message names the broker and the operation."""


def admin() -> AdminClient:
    return AdminClient({"bootstrap.servers": BOOTSTRAP, "log_level": 0})


def ping(timeout: float) -> None:
    try:
        metadata = admin().list_topics(timeout=timeout)
    except KafkaException as err:
        raise KafkaAdminError(f"Kafka at {BOOTSTRAP} did not answer: {err}") from err
    if not metadata.brokers:
        raise KafkaAdminError(f"Kafka at {BOOTSTRAP} has no brokers yet")


def ensure_topics(specs: list[str]) -> None:
    client = admin()
    existing = client.list_topics(timeout=10).topics
    wanted = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        partitions, _, policy = rest.partition(":")
        config = {"cleanup.policy": "compact"} if policy == "compact" else {}
        if name not in existing:
            wanted.append(
                NewTopic(
                    name, num_partitions=int(partitions or 1), replication_factor=1, config=config
                )
            )
    if not wanted:
        print("topics already exist:", ", ".join(s.split(":")[0] for s in specs))
        return
    for name, future in client.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result()
        except KafkaException as err:
            if "TOPIC_ALREADY_EXISTS" not in str(err):
                raise KafkaAdminError(f"could not create topic {name}: {err}") from err
        print("created topic", name)


def delete_topics(names: list[str]) -> None:
    # Keep the client referenced until every future resolved: a client collected early
    # fails its pending requests with _DESTROY ("handle destroyed").
    client = admin()
    for name, future in client.delete_topics(names, operation_timeout=30).items():
        try:
            future.result()
        except KafkaException as err:
            if "UNKNOWN_TOPIC" not in str(err):
                raise KafkaAdminError(f"could not delete topic {name}: {err}") from err


def _latest_offsets_for(offsets_dir: Path, topic: str) -> dict[int, int] | None:
    batches = sorted((int(p.name) for p in offsets_dir.iterdir() if p.name.isdigit()), reverse=True)
    if not batches:
        return None
    # Format: a version line, a metadata JSON line, then one JSON line per source.
    for line in (offsets_dir / str(batches[0])).read_text().splitlines()[2:]:
        try:
            source = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(source, dict) and topic in source:
            return {int(p): int(o) for p, o in source[topic].items()}
    return None


def checkpoint_offsets(checkpoint: Path, topic: str) -> dict[int, int]:
    """The offsets Spark reads next for topic, from the newest file of an offsets/ folder.

    The consumer may keep one checkpoint per query under SPARK_CHECKPOINT_DIR, so every
    offsets/ folder up to three levels down is looked at; the one naming the topic wins.
    """
    if not checkpoint.is_dir():
        return {}
    candidates = [checkpoint / "offsets"] + [
        d for depth in ("*/offsets", "*/*/offsets", "*/*/*/offsets") for d in checkpoint.glob(depth)
    ]
    for offsets_dir in candidates:
        if offsets_dir.is_dir():
            found = _latest_offsets_for(offsets_dir, topic)
            if found is not None:
                return found
    return {}


def lag(topic: str, checkpoint: Path) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {"bootstrap.servers": BOOTSTRAP, "group.id": "stack-lag-probe", "log_level": 0}
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaAdminError(f"topic {topic} not found on {BOOTSTRAP}")
        done = checkpoint_offsets(checkpoint, topic)
        total_end = 0
        total_lag = 0
        for partition in sorted(metadata.partitions):
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total_end += high
            total_lag += max(high - done.get(partition, 0), 0)
        source = "checkpoint" if done else "no checkpoint yet"
        print(f"{topic}: end offsets {total_end}, consumer lag {total_lag} ({source})")
    finally:
        consumer.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ping_cmd = sub.add_parser("ping")
    ping_cmd.add_argument("--timeout", type=float, default=5.0)
    ensure_cmd = sub.add_parser("ensure-topics")
    ensure_cmd.add_argument("specs", nargs="+")
    delete_cmd = sub.add_parser("delete-topics")
    delete_cmd.add_argument("names", nargs="+")
    lag_cmd = sub.add_parser("lag")
    lag_cmd.add_argument("--topic", required=True)
    lag_cmd.add_argument("--checkpoint", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "ping":
            ping(args.timeout)
        elif args.command == "ensure-topics":
            ensure_topics(args.specs)
        elif args.command == "delete-topics":
            delete_topics(args.names)
        else:
            lag(args.topic, args.checkpoint)
    except (KafkaAdminError, KafkaException) as err:
        print(f"kafka_admin: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
