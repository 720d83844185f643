"""Cost of a record from a price table: per-token prices for APIs, CPU-seconds x $/CPU-hour for local compute.

The defaults are placeholders to be overridden (``--prices prices.yaml``), not quotes of any vendor:

    grpc:      {cpu_hour_usd: 0.05}                    # our server: priced by compute time
    local:     {cpu_hour_usd: 0.05}
    openai:    {input_per_mtok_usd: 0.15, output_per_mtok_usd: 0.60}
    anthropic: {input_per_mtok_usd: 0.80, output_per_mtok_usd: 4.00}

For compute-priced backends the CPU-seconds of a record are the server's prefill + decode milliseconds
(``Usage``); when the backend can measure the real CPU time of the whole run (the ``local`` backend reads
its child process from ``/proc``), that total is shared out over records in proportion to their compute
time, so the sum of record costs equals the measured CPU cost.

What it deliberately does not do: GPU pricing tiers, cached-token discounts, or currency conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Price:
    """Prices of one backend (USD)."""

    input_per_mtok_usd: float = 0.0
    output_per_mtok_usd: float = 0.0
    cpu_hour_usd: float = 0.0

    def record_cost(self, prompt_tokens: int, completion_tokens: int, cpu_seconds: float | None) -> float:
        """USD for one record."""
        tokens = (
            prompt_tokens * self.input_per_mtok_usd + completion_tokens * self.output_per_mtok_usd
        ) / 1e6
        return tokens + (cpu_seconds or 0.0) * self.cpu_hour_usd / 3600.0


DEFAULT_PRICES: dict[str, Price] = {
    "grpc": Price(cpu_hour_usd=0.05),
    "local": Price(cpu_hour_usd=0.05),
    "openai": Price(input_per_mtok_usd=0.15, output_per_mtok_usd=0.60),
    "anthropic": Price(input_per_mtok_usd=0.80, output_per_mtok_usd=4.00),
}


def parse_prices(raw: Mapping[str, Any]) -> dict[str, Price]:
    """``{"grpc": {"cpu_hour_usd": 0.1}}`` merged over the defaults.

    Raises:
        ValueError: on an unknown price field or a negative price.
    """
    allowed = {f.name for f in fields(Price)}
    table = dict(DEFAULT_PRICES)
    for kind, spec in raw.items():
        if not isinstance(spec, Mapping) or set(spec) - allowed:
            raise ValueError(
                f"bad price entry {kind!r}: {spec!r}; accepted fields: {', '.join(sorted(allowed))}"
            )
        values = {k: float(v) for k, v in spec.items()}
        if any(v < 0 for v in values.values()):
            raise ValueError(f"bad price entry {kind!r}: prices must be >= 0, got {values}")
        table[kind] = Price(**values)
    return table
