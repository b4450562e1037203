"""The consumer's small exception hierarchy.

Raised by state.py, sink.py and job.py; __main__.py turns ServiceUnavailableError into
a one-line message naming the service and how to start it.
"""

from __future__ import annotations


class ConsumerError(Exception):
    """Base class of every error the consumer raises on purpose."""


class TransientError(ConsumerError):
    """A condition expected to pass (a lock held, a statement cancelled) outlasted the retries.

    The streaming query fails with it and job.py restarts the query (retries.py decides).
    """


class ServiceUnavailableError(TransientError):
    """A service the consumer needs (Kafka, Redis, PostgreSQL) cannot be reached."""

    def __init__(self, service: str, target: str, detail: str) -> None:
        self.service = service
        self.target = target
        super().__init__(
            f"{service} is not reachable at {target} ({detail}); "
            "start the local services with `make services`"
        )


class SinkError(ConsumerError):
    """Writing a micro-batch into PostgreSQL failed for a reason retrying cannot fix."""
