"""Score maps for the Top-K tests (shared by the PyTorch and ONNX Runtime tests).

Every generator takes a numpy Generator and returns a float32 (h, w) map. ``reference_mask``
is the selection rule written independently of the implementation (numpy lexsort).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

F32 = np.float32
TINY = float(np.finfo(np.float32).smallest_subnormal)  # 2^-149


def exact_ceil(ratio: float, numel: int) -> int:
    """ceil(ratio * numel) in exact rational arithmetic (float64 gets 0.1 * 960 wrong)."""
    return math.ceil(Fraction(str(ratio)) * numel)


def reference_mask(values: np.ndarray, k: int) -> np.ndarray:
    """The selection rule: value descending, NaN below -inf, ties by lowest flat index."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    nan = np.isnan(flat)
    keyed = np.where(nan, -np.inf, flat).astype(np.float64)
    order = np.lexsort((np.arange(flat.size), nan, -keyed))  # last key is the primary one
    mask = np.zeros(flat.size, dtype=np.float32)
    mask[order[:k]] = 1
    return mask.reshape(np.shape(values))


def topk_mask(values: np.ndarray, k: int) -> np.ndarray:
    """torch.topk's selection (the reference on maps of distinct values)."""
    flat = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).reshape(1, -1))
    mask = torch.zeros_like(flat).scatter(1, torch.topk(flat, k, dim=1).indices, 1.0)
    return mask.numpy().reshape(np.shape(values))


def distinct(values: np.ndarray) -> bool:
    flat = values.reshape(-1)
    return not np.isnan(flat).any() and np.unique(flat).size == flat.size  # unique: -0.0 == 0.0


def _fill(rng, pool: np.ndarray, h: int, w: int) -> np.ndarray:
    """h*w distinct values of a pool (float32, deduplicated), shuffled."""
    pool = np.unique(pool.astype(F32))
    pool = pool[~((pool == 0) & np.signbit(pool))] if (pool == 0).sum() > 1 else pool
    if pool.size < h * w:
        raise ValueError("pool too small")
    return rng.permutation(rng.choice(pool, h * w, replace=False)).reshape(h, w).astype(F32)


def log_uniform(rng, h, w, lo=1e-38, hi=1.0, signed=False) -> np.ndarray:
    n = 2 * h * w + 16
    mags = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    signs = rng.choice([-1.0, 1.0], n) if signed else 1.0
    return _fill(rng, mags * signs, h, w)


def any_float(rng, h, w) -> np.ndarray:
    """Uniform over float32 bit patterns: every finite magnitude, denormals, both signs."""
    bits = rng.integers(0, 2**32, 2 * h * w + 16, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    return _fill(rng, values[np.isfinite(values)], h, w)


def denormals(rng, h, w, signed=True) -> np.ndarray:
    m = rng.choice(2**23, 2 * h * w + 16, replace=False).astype(np.float64)
    signs = rng.choice([-1.0, 1.0], m.size) if signed else 1.0
    return _fill(rng, m * TINY * signs, h, w)


def tiny_kth(rng, h, w, k) -> np.ndarray:
    """The k-1 largest values near 1e30..1e38, every other one 1e-38..1e-30 (k-th tiny)."""
    big = np.exp(rng.uniform(np.log(1e30), np.log(3e38), k - 1))
    small = np.exp(rng.uniform(np.log(1e-38), np.log(1e-30), h * w - k + 1 + 16))
    pool_big = np.unique(big.astype(F32))
    pool_small = np.unique(small.astype(F32))
    if pool_big.size < k - 1 or pool_small.size < h * w - k + 1:
        raise ValueError("pool too small")
    values = np.concatenate(
        [rng.choice(pool_big, k - 1, replace=False), rng.choice(pool_small, h * w - k + 1, replace=False)]
    )
    return rng.permutation(values).reshape(h, w).astype(F32)


def float_run(rng, h, w, start: float | None = None) -> np.ndarray:
    """h*w consecutive float32 values (each one step above the previous), shuffled."""
    if start is None:
        start = any_float(rng, 1, 1)[0, 0]
    run = [F32(start)]
    while len(run) < h * w:
        nxt = np.nextafter(run[-1], F32(np.inf))
        if not np.isfinite(nxt):
            return float_run(rng, h, w, -start if start > 0 else F32(1.0))
        run.append(F32(0.0) if nxt == 0 else nxt)  # -0.0 and +0.0 are one value: keep +0.0
    return rng.permutation(np.array(run, dtype=F32)).reshape(h, w)


def saturated_sigmoid(rng, h, w, scale=40.0) -> np.ndarray:
    """sigmoid of wide logits in float32: runs of exact 1.0 and 0.0 (ties), tiny values."""
    logits = torch.from_numpy(rng.normal(0.0, scale, (h, w)).astype(F32))
    return torch.sigmoid(logits).numpy()
