"""Percentiles and target checks."""

from __future__ import annotations

import math
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def figure(
    name: str,
    value: float | None,
    unit: str,
    target: float | None = None,
    op: str = ">=",
    note: str = "",
) -> dict[str, Any]:
    """One measured figure, with its target from the issue and whether it was met."""
    met: bool | None = None
    ratio: float | None = None
    if target is not None and value is not None:
        met = value >= target if op == ">=" else value <= target
        ratio = value / target if target else None
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": target,
        "op": op,
        "met": met,
        "ratio_to_target": round(ratio, 3) if ratio is not None else None,
        "note": note,
    }
