"""Variant choice: which member of a model group (fp32, int8, pruned, ...) runs a batch.

Pure policy: no clock of its own, no onnxruntime. `SchedulerCore` asks it twice:

- at admission, `admission_latency(tier)`: the L(b) to predict a new request's finish
  with, that of the fastest variant the request may use and the budget allows now
  (so the queue may grow to what the fastest variant drains before anyone is
  refused: "shift load to faster variants before refusing anyone");
- at each online dispatch, `choose(...)`: the most accurate variant that serves the
  lane's present queue in time: the next batch makes the head's deadline and the
  whole queue drains within the online deadline budget. Below saturation that is
  always the reference; under overload the faster variants take only the share of
  batches that the queue needs.

Hysteresis (no flapping): moving to a faster variant happens at once (a deadline is
at stake), moving back to a more accurate one only after DWELL_S on the present one
and when the more accurate one would drain the queue within UP_MARGIN of the budget.
So switches per second stay below 2 / DWELL_S.

Accuracy budget: each variant has an `accuracy` (its agreement or accuracy against
the reference, measured by `kairos optimize` or declared; 1.0 for the reference).
Serving a row on it spends 1 - accuracy. The average spent over recently served rows
(exponentially weighted over about BUDGET_WINDOW_ROWS rows) must stay within
`budget`: once it reaches it, only variants whose own loss fits the budget may run,
until the average is back below BUDGET_RESUME x budget.

Per-request floors (`kairos_min_accuracy`): a request goes to the lane of its *tier*,
the variants at least as accurate as its floor; a batch only ever runs on a variant
of its lane's tier, so a floor is never violated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .latency import LatencyModel

# Least time on a variant before moving back to a more accurate one.
DWELL_S = 0.05
# Moving back needs the more accurate variant to drain the queue within this
# fraction of the online budget.
UP_MARGIN = 0.5
# The accuracy spent is averaged over about this many recently served rows.
BUDGET_WINDOW_ROWS = 10_000
# Once the budget is spent, lossy variants wait until the average is back below this
# fraction of it (else the choice would flip at every batch around the budget).
BUDGET_RESUME = 0.9


@dataclass
class Variant:
    name: str
    accuracy: float  # agreement/accuracy against the reference, in [0, 1]
    latency: LatencyModel
    rows: int = 0  # rows served
    requests: int = 0  # request slices served
    batches: int = 0


class VariantChooser:
    """The variants of one model group, most accurate first (index 0: the reference)."""

    def __init__(self, variants: list[Variant], budget: float):
        if not variants:
            raise ValueError("a model group needs at least its reference variant")
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"accuracy budget must be in [0, 1], not {budget}")
        accuracies = [v.accuracy for v in variants[1:]]
        if accuracies != sorted(accuracies, reverse=True):
            raise ValueError("variants must come most accurate first, after the reference")
        self.variants = list(variants)
        self.budget = budget
        self.current = 0
        self.switched_at = -math.inf
        self.switches = 0
        self._loss = 0.0  # decayed sum of (1 - accuracy) x rows
        self._weight = 0.0  # decayed sum of rows
        self._exhausted = False  # the budget was reached; not yet back below BUDGET_RESUME

    # -- tiers and budget -------------------------------------------------

    def tier(self, min_accuracy: float) -> int:
        """Index of the least accurate variant a request with this floor may use."""
        tier = 0
        for index, variant in enumerate(self.variants):
            if variant.accuracy >= min_accuracy:
                tier = index
        return tier

    def spent(self) -> float:
        """Average accuracy given up over recently served rows."""
        return self._loss / self._weight if self._weight > 0 else 0.0

    def _affordable(self, index: int) -> bool:
        loss = 1.0 - self.variants[index].accuracy
        return index == 0 or loss <= self.budget or not self._exhausted

    def _candidates(self, tier: int) -> list[int]:
        return [i for i in range(tier + 1) if self._affordable(i)]

    def fastest(self, tier: int, rows: int) -> int:
        """The candidate variant with the shortest L(rows)."""
        return min(self._candidates(tier), key=lambda i: self.variants[i].latency.predict(rows))

    def admission_latency(self, tier: int, rows: int) -> LatencyModel:
        return self.variants[self.fastest(tier, rows)].latency

    # -- choice -----------------------------------------------------------

    def choose(
        self, *, tier: int, queued_rows: int, cap: int, head_slack: float, wait: float,
        budget: float, now: float,
    ) -> int:
        """The variant for the next batch of a lane: see the module docstring.

        queued_rows: the lane's queued online rows; head_slack: its earliest deadline
        minus now; wait: until an executor is free; budget: the online deadline
        budget (the drain target; inf when unknown)."""
        candidates = self._candidates(tier)
        current = self.current
        back = now - self.switched_at >= DWELL_S
        chosen = None
        for index in candidates:
            margin = 1.0
            if index < current:
                if not back:
                    continue
                margin = UP_MARGIN
            if self._serves(index, queued_rows, cap, head_slack, wait, budget, margin):
                chosen = index
                break
        if chosen is None:
            chosen = self.fastest(tier, min(max(queued_rows, 1), cap))
        if tier == len(self.variants) - 1:  # a lane any variant may serve sets the state
            self._switch(chosen, now)
        return chosen

    def _serves(
        self, index: int, rows: int, cap: int, head_slack: float, wait: float, budget: float,
        margin: float,
    ) -> bool:
        latency = self.variants[index].latency
        table = latency.table_list
        first = table[min(max(rows, 1), cap)]
        if wait + first > head_slack:
            return False
        if budget == math.inf:
            return True
        return wait + latency.drain_time(rows) <= budget * margin

    def _switch(self, index: int, now: float) -> None:
        if index != self.current:
            self.current = index
            self.switched_at = now
            self.switches += 1

    # -- accounting -------------------------------------------------------

    def served(self, index: int, rows: int, requests: int, online: bool) -> None:
        """A batch of `rows` rows (`requests` request slices) ran on variant `index`."""
        variant = self.variants[index]
        variant.rows += rows
        variant.requests += requests
        variant.batches += 1
        decay = math.exp(-rows / BUDGET_WINDOW_ROWS)
        self._loss = self._loss * decay + (1.0 - variant.accuracy) * rows
        self._weight = self._weight * decay + rows
        spent = self.spent()
        if spent >= self.budget:
            self._exhausted = True
        elif spent < self.budget * BUDGET_RESUME:
            self._exhausted = False

    def describe(self) -> dict[str, Any]:
        total = sum(v.rows for v in self.variants) or 1
        return {
            "accuracy_budget": self.budget,
            "accuracy_spent": round(self.spent(), 6),
            "current": self.variants[self.current].name,
            "switches": self.switches,
            "variants": [
                {
                    "name": v.name,
                    "accuracy": v.accuracy,
                    "rows": v.rows,
                    "requests": v.requests,
                    "batches": v.batches,
                    "share": round(v.rows / total, 6),
                    "latency_table": v.latency.table(),
                }
                for v in self.variants
            ],
        }
