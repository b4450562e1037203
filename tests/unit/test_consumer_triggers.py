"""Unit tests of the consumer's triggers: which Spark trigger each streaming query gets.

The expectations are the documented settings (docs/consumer.md, "Settings"), written out
by hand; no Spark session, no services.
"""

from __future__ import annotations

from typing import Any

import pytest

from consumer_app.config import ConsumerSettings
from consumer_app.job import _gaps_trigger, _trigger

pytestmark = pytest.mark.unit


def settings(prices: str, gaps: str) -> ConsumerSettings:
    values: dict[str, Any] = {
        "SPARK_TRIGGER_INTERVAL": prices,
        "CONSUMER_GAPS_TRIGGER_INTERVAL": gaps,
    }
    return ConsumerSettings(**values)


@pytest.mark.parametrize(
    ("prices", "gaps", "prices_trigger", "gaps_trigger"),
    [
        # the defaults: prices as fast as possible, the rare gap reports every 5 seconds
        ("", "5 seconds", {"processingTime": "0 seconds"}, {"processingTime": "5 seconds"}),
        # a processingTime for the prices does not change the gaps' own interval
        ("2 seconds", "1 minute", {"processingTime": "2 seconds"}, {"processingTime": "1 minute"}),
        # empty gaps interval: the gaps query follows the prices trigger
        ("", "", {"processingTime": "0 seconds"}, {"processingTime": "0 seconds"}),
        ("15 seconds", " ", {"processingTime": "15 seconds"}, {"processingTime": "15 seconds"}),
        # draining (tests, replays, the bench): both queries drain and stop, whatever the gaps say
        ("availableNow", "5 seconds", {"availableNow": True}, {"availableNow": True}),
        ("AvailableNow", "", {"availableNow": True}, {"availableNow": True}),
    ],
)
def test_each_query_gets_its_documented_trigger(
    prices: str, gaps: str, prices_trigger: dict[str, Any], gaps_trigger: dict[str, Any]
) -> None:
    s = settings(prices, gaps)
    assert _trigger(s) == prices_trigger
    assert _gaps_trigger(s) == gaps_trigger


def test_the_gaps_query_defaults_to_five_seconds() -> None:
    assert ConsumerSettings.model_fields["consumer_gaps_trigger_interval"].default == "5 seconds"
