"""``python -m producer_app``: run the producer from the environment until SIGTERM/SIGINT.

Settings come from the environment (``producer_app.config``); events go to Kafka. On
SIGTERM or SIGINT the producer closes its connections, fills pending gaps, flushes Kafka
and exits 0 (1 if a record was lost for good, 2 if a service it needs is missing, 3 after a
fatal Kafka producer error: the supervisor restarts it and resume fills the downtime).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from producer_app.app import Producer, RunSummary
from producer_app.config import ProducerSettings, load_settings
from producer_app.sink import FatalSinkError, SinkError

log = logging.getLogger("producer_app")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)


async def run_producer(settings: ProducerSettings) -> RunSummary:
    producer = Producer(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, producer.request_stop)
    return await producer.run()


def main() -> int:
    settings = load_settings()
    configure_logging(settings.producer_log_level)
    try:
        summary = asyncio.run(run_producer(settings))
    except FatalSinkError as err:
        log.critical("%s", err)
        return 3
    except SinkError as err:
        log.error("%s", err)
        return 2
    log.info("stopped: %s", summary)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
