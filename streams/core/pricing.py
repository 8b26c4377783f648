"""What an AI call costs: the price table and the arithmetic, shared by the analyst and the
re-analysis estimate. Overrides are read by ``adapters.openai.load_prices``."""

from __future__ import annotations

import re
from collections.abc import Mapping

# USD per 1M (prompt, completion) tokens, from OpenAI's public price list. Override or
# extend with ``load_prices`` (other providers, new models, negotiated prices).
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}

# Responses name the dated snapshot (gpt-4o-mini-2024-07-18) that the alias resolved to.
_SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    prices: Mapping[str, tuple[float, float]] = PRICES,
) -> float:
    """Price of one call; 0.0 for a model the table does not know (the caller logs that)."""
    price = prices.get(model) or prices.get(_SNAPSHOT_SUFFIX.sub("", model))
    if price is None:
        return 0.0
    prompt_price, completion_price = price
    return round((prompt_tokens * prompt_price + completion_tokens * completion_price) / 1e6, 8)
