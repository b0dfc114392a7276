"""Estimated teacher cost from token counts. Prices are US dollars per million tokens (input, output), as
listed by OpenAI when this table was written; they change, so `--price-in/--price-out` override them."""

from __future__ import annotations

PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}


def price_for(
    model: str, override: tuple[float | None, float | None] = (None, None)
) -> tuple[float, float] | None:
    """(input, output) price per million tokens: the override, else the longest table prefix of `model`."""
    if override[0] is not None and override[1] is not None:
        return override[0], override[1]
    name = model.lower().split("/")[-1]
    matches = [prefix for prefix in PRICES_PER_MILLION if name.startswith(prefix)]
    return PRICES_PER_MILLION[max(matches, key=len)] if matches else None


def estimate_cost(
    prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None
) -> float | None:
    if price is None:
        return None
    return round((prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6, 6)
