"""What the lag collector exposes when readings fail: the last values for a failure or
two, then none (a frozen value would look current), and the failures in a row."""

from __future__ import annotations

from confluent_kafka import KafkaException

from streams.adapters.lag import STALE_AFTER, GroupLag, LagCollector, PartitionLag

READING = [GroupLag("it-batcher", "events", "stable", 1, (
    PartitionLag("it-batcher", "events", 0, 10, 25, 15, 3.0),))]


class Broker:
    """A Reader whose answers the test decides."""

    def __init__(self) -> None:
        self.up = True

    def read(self) -> list[GroupLag]:
        if not self.up:
            raise KafkaException("no broker answered")
        return READING


def exposed(collector: LagCollector) -> dict[str, float]:
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in collector.collect() for s in family.samples}


def test_lag_goes_unexported_after_failed_readings_in_a_row_and_comes_back() -> None:
    collector, broker = LagCollector(), Broker()
    collector.refresh(broker)
    lag = "streamsight_consumer_lag_messages[('group', 'it-batcher'), ('partition', '0'), " \
          "('topic', 'events')]"
    assert exposed(collector)[lag] == 15
    broker.up = False
    for failures in range(1, STALE_AFTER):
        collector.refresh(broker)
        assert exposed(collector)[lag] == 15, "a failure or two keep the last values"
        assert exposed(collector)["streamsight_consumer_lag_read_failures[]"] == failures
    collector.refresh(broker)
    now = exposed(collector)
    assert now["streamsight_consumer_lag_read_failures[]"] == STALE_AFTER
    assert not [name for name in now if "lag_messages" in name or "group_state" in name]
    broker.up = True
    collector.refresh(broker)
    assert exposed(collector)[lag] == 15
    assert exposed(collector)["streamsight_consumer_lag_read_failures[]"] == 0
