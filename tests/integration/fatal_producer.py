"""`python -m producer_app`, plus a way to give its Kafka client a fatal error (drill, item 6).

Run as a script (``python tests/integration/fatal_producer.py``) with the producer's
environment; it runs ``producer_app.__main__.main()`` unchanged. On SIGUSR1 it calls
librdkafka's own ``rd_kafka_test_fatal_error()`` on every Kafka producer of the process:
librdkafka then raises the fatal error through the same path a broker-caused fatal error of
the idempotent producer takes (``rd_kafka_set_fatal_error``), so the producer sees exactly
what it would see in production: ``poll()`` raises the fatal error once, every later
``produce()`` is refused with ``_FATAL``, the instance never delivers again. The Python
binding does not expose that function, so it is called through ctypes with the
``rd_kafka_t`` handle the binding keeps right after the object header (checked with
``rd_kafka_name()``, ``<client.id>#producer-<n>``, before use). A real broker could not be
made to raise one on demand: see docs/reliability.md, "Producer".
"""

from __future__ import annotations

import ctypes
import gc
import signal
import sys
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import confluent_kafka  # noqa: E402 - after the path set-up above
import confluent_kafka.cimpl  # noqa: E402

#: The error an idempotent producer cannot recover from (a broker's sequence check failed).
INJECTED = 45  # RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER
REASON = b"drill: fatal idempotent-producer error injected by tests/integration/fatal_producer.py"

_lib = ctypes.CDLL(confluent_kafka.cimpl.__file__)  # resolves librdkafka's symbols too
_lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
_lib.rd_kafka_name.restype = ctypes.c_char_p
_lib.rd_kafka_test_fatal_error.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
_lib.rd_kafka_test_fatal_error.restype = ctypes.c_int


def _handle(producer: confluent_kafka.Producer) -> int:
    """The rd_kafka_t pointer of a binding object (after PyObject_HEAD: refcount, type)."""
    rk = ctypes.c_void_p.from_address(id(producer) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    name = _lib.rd_kafka_name(rk) if rk else b""
    if rk is None or b"#producer-" not in name:  # "<client.id>#producer-<n>"
        raise RuntimeError(f"not a librdkafka producer handle: {name!r}")
    return rk


def _inject(_signum: int, _frame: FrameType | None) -> None:
    producers = [o for o in gc.get_objects() if isinstance(o, confluent_kafka.Producer)]
    for producer in producers:
        code = _lib.rd_kafka_test_fatal_error(_handle(producer), INJECTED, REASON)
        print(f"fatal_producer: injected into {len(producers)} producer(s): {code}", flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _inject)
    from producer_app.__main__ import main

    sys.exit(main())
