"""`python -m consumer_app`: run the Spark streaming job with settings from the environment."""

from __future__ import annotations

import logging
import sys

from consumer_app.config import get_settings
from consumer_app.errors import ConsumerError, ServiceUnavailableError
from consumer_app.job import ConsumerJob, install_signal_handlers

log = logging.getLogger("consumer_app")


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    job = ConsumerJob(get_settings())
    install_signal_handlers(job)
    try:
        job.run()
    except ServiceUnavailableError as err:
        log.error("%s", err)
        return 2
    except ConsumerError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
