"""Prometheus metrics of the worker (prometheus-client), served at ``/metrics``.

Names carry their unit, counters end in ``_total``, labels stay low-cardinality (model,
outcome, severity: never ids).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

REGISTRY = CollectorRegistry()

AI_REQUESTS = Counter(
    "streamsight_ai_requests_total", "Calls to the AI provider, by model and outcome.",
    ["model", "outcome"], registry=REGISTRY)
AI_TOKENS = Counter(
    "streamsight_ai_tokens_total", "Tokens billed by the AI provider.",
    ["model", "kind"], registry=REGISTRY)
AI_COST = Counter(
    "streamsight_ai_cost_usd_total", "What the AI calls cost, in US dollars.",
    ["model"], registry=REGISTRY)
AI_BREAKER_STATE = Gauge(
    "streamsight_ai_breaker_state",
    "Circuit breaker of the AI provider: 0 closed, 1 half-open, 2 open.", registry=REGISTRY)
AI_DAILY_BUDGET_SPENT = Gauge(
    "streamsight_ai_daily_budget_spent",
    "1 while AI_BUDGET_USD_PER_DAY is spent and requests wait, else 0.", registry=REGISTRY)
INSIGHTS = Counter(
    "streamsight_insights_total", "Insights published, by analyzer and severity.",
    ["analyzer", "severity"], registry=REGISTRY)

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def exposition() -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(REGISTRY)
