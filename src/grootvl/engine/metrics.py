"""Running averages of scalar metrics, reducible across processes."""
from __future__ import annotations

import torch

from .distributed import all_reduce_sum


class MetricSums:
    """Accumulates weighted sums of scalar metrics; ``reduced()`` averages over all ranks.

    ``add(n, loss=l)`` adds ``l * n`` to the sum of ``loss`` and ``n`` to its count, so the
    final value is the per-sample mean over every sample seen by every rank.
    """

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, n: int | float, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * n
            self.counts[key] = self.counts.get(key, 0.0) + n

    def local(self) -> dict[str, float]:
        return {k: self.sums[k] / max(self.counts[k], 1e-12) for k in self.sums}

    def reduced(self, device: torch.device) -> dict[str, float]:
        """Means over all ranks (every rank gets the same numbers)."""
        packed = {f"s/{k}": v for k, v in self.sums.items()}
        packed.update({f"n/{k}": v for k, v in self.counts.items()})
        total = all_reduce_sum(packed, device)
        return {k: total[f"s/{k}"] / max(total[f"n/{k}"], 1e-12) for k in self.sums}
