"""The threshold Top-K this project shipped before issue 12, kept for the benchmarks that compare
against it (topk_overhead.py times it, topk_confident.py counts what it selects)."""

from __future__ import annotations

import torch


def legacy_bisection_mask(importance: torch.Tensor, k: torch.Tensor, steps: int = 32) -> torch.Tensor:
    """Mask shaped like ``importance`` (N, ...): ``steps`` bisection steps over [min, max] of each
    image's importance values for the smallest threshold that keeps >= k of them, then every value
    >= it. Ties, saturated maps and values finer than (max - min) / 2**steps give supersets of k.
    ``k``: one count per image (or one for all)."""
    flat = importance.flatten(1).float()
    k = k.reshape(-1, 1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    count = lambda t: (flat >= t).float().sum(1, keepdim=True)  # noqa: E731
    for _ in range(steps):
        mid = (lo + hi) * 0.5
        enough = count(mid) >= k
        lo, hi = torch.where(enough, mid, lo), torch.where(enough, hi, mid)
    threshold = torch.where(count(hi) >= k, hi, lo)
    return (flat >= threshold).to(importance.dtype).view_as(importance)
