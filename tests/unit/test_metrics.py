"""Our bulk histogram exposes exactly what prometheus-client's own histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.adapters.metrics import BulkHistogram

BUCKETS = (0.005, 0.01, 0.1, 1, 2, 10)


def test_bulk_histogram_matches_observe_one_by_one() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("op_seconds", "Durations.", BUCKETS, ours)
    single = Histogram("op_seconds", "Durations.", buckets=BUCKETS, registry=theirs)
    rng = random.Random(3)
    for _ in range(5):
        # Bucket bounds themselves included: a value equal to le belongs in that bucket.
        values = [rng.choice([*BUCKETS, rng.expovariate(2)]) for _ in range(1000)]
        bulk.observe_many(values)
        for value in values:
            single.observe(value)
    bulk.observe_many([])

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {(s.name, s.labels.get("le", "")): s.value
                for family in registry.collect() for s in family.samples
                if not s.name.endswith("_created")}

    expected = samples(theirs)
    got = samples(ours)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) < 1e-6, key
    assert b"op_seconds_bucket{le=\"+Inf\"} 5000.0" in generate_latest(ours)
