"""Dominance among variants: accuracy up, size and speed cost down.

speed cost = 1 / effective speedup, where the effective speedup is 1.0 for a variant with no measurable
difference from the baseline (report.py): variants equal in speed are not told apart by noise.
A dominates B when A is at least as accurate and at most as costly in every cost, and strictly better in one.
"""

from __future__ import annotations


def speed_cost(row: dict) -> float:
    """Lower is faster: 1 / effective speedup; a variant without timings counts as infinitely slow."""
    return 1.0 / row["effective_speedup"] if row.get("effective_speedup") else float("inf")


COSTS = ("size_bytes", "speed_cost")  # lower is better; accuracy: higher is better


def _cost(row: dict, key: str) -> float:
    return speed_cost(row) if key == "speed_cost" else row[key]


def dominates(a: dict, b: dict, costs: tuple[str, ...] = COSTS) -> bool:
    """a is at least as accurate as b and at most as costly in each of `costs`, and strictly better in one."""
    ge = a["accuracy"] >= b["accuracy"] and all(_cost(a, c) <= _cost(b, c) for c in costs)
    gt = a["accuracy"] > b["accuracy"] or any(_cost(a, c) < _cost(b, c) for c in costs)
    return ge and gt


def pareto_front(rows: list[dict], costs: tuple[str, ...] = COSTS) -> list[str]:
    """Variants that no other variant dominates (accuracy up, `costs` down), in row order."""
    return [r["variant"] for r in rows if not any(dominates(o, r, costs) for o in rows if o is not r)]


