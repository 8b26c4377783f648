"""The alert rules in prometheus/ name only metrics the code exposes, and are complete.

promtool (`make test-rules`) checks the syntax and what the alerts do on given series, but
not whether those series exist: a misspelt metric makes an alert that never fires and a
test that passes on made-up input. This compares both files with the registry.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.adapters.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "prometheus"
RUNBOOK = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Runbook"]
RUNBOOK_TEXT = (ROOT / "docs" / "runbook.md").read_text()

# The consumer-lag gauges come from the lag exporter and the workers, written apart from
# streams/adapters/metrics.py (streams/adapters/lag.py, not in the registry yet), so they
# are named here. Remove a name once the registry has it.
LAG_METRICS = {
    "streamsight_consumer_lag_messages",
    "streamsight_consumer_lag_seconds",
    "streamsight_consumer_group_members",
}

_METRIC = re.compile(r"streamsight_[a-z_]+")
# Histograms are queried through their series, the registry knows the family.
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def _exposed() -> set[str]:
    # prometheus-client drops `_total` from a counter's family name; the series has it.
    names = {
        family.name + "_total" if family.type == "counter" else family.name
        for family in REGISTRY.collect()
    }
    return names | LAG_METRICS


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROMETHEUS / name).read_text())
    return loaded


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _load("alerts.yml")["groups"] for rule in group["rules"]
            if "alert" in rule]


def _unknown(text: str) -> set[str]:
    used = {_HISTOGRAM_SERIES.sub("", name) for name in _METRIC.findall(text)}
    return used - _exposed()


def test_the_registry_lists_counters_with_total() -> None:
    # Guards _exposed(): were the family names to change, every check below would miss.
    assert "streamsight_events_consumed_total" in _exposed()
    assert "streamsight_operation_duration_seconds" in _exposed()


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_alert_uses_only_exposed_metrics(rule: dict[str, Any]) -> None:
    assert _METRIC.search(rule["expr"]) or "up{" in rule["expr"]
    assert _unknown(rule["expr"]) == set()


@pytest.mark.parametrize("rule", _alerts(), ids=lambda rule: rule["alert"])
def test_alert_is_labelled_and_explained(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Streamsight")
    assert rule.get("for"), "fires on one evaluation"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    for key in ("summary", "description", "runbook_url"):
        assert rule["annotations"].get(key), f"no {key}"
    # Absolute, so that it works from a notification, and to a section that exists.
    assert rule["annotations"]["runbook_url"] == f"{RUNBOOK}#{rule['alert'].lower()}"
    assert f"\n## {rule['alert']}\n" in RUNBOOK_TEXT, "no section in docs/runbook.md"


def test_every_runbook_section_is_an_alert() -> None:
    sections = re.findall(r"^## (\w+)$", RUNBOOK_TEXT, re.M)
    assert sorted(sections) == sorted(rule["alert"] for rule in _alerts())


def test_test_series_are_exposed_metrics() -> None:
    series = [item["series"] for test in _load("alerts_test.yml")["tests"]
              for item in test["input_series"]]
    # Whole names, so that a test series outside the streamsight_ prefix is caught too.
    names = {_HISTOGRAM_SERIES.sub("", text.split("{", 1)[0]) for text in series}
    assert names - {"up"} - _exposed() == set()


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [case for test in _load("alerts_test.yml")["tests"]
             for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {rule["alert"] for rule in _alerts()}
    assert names - firing == set(), "never seen firing"
    assert names - silent == set(), "never seen silent"
