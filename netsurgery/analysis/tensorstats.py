"""How one array changed between two models: the statistics of :func:`tensor_diff`.

The definitions (relative mean and L2 change, quantiles of the element-wise relative change,
cosine, bit identity) are in :mod:`netsurgery.analysis.diff`'s docstring, which compares whole
networks with this function; this module is its numerical kernel.

Sums and dot products are float64 (Δ of two float32 values is exact in float64). The
element-wise ratio is computed in float64 and kept as float32 for the quantiles (relative
error ~6e-8). Arrays are streamed from the memory-mapped files in cache-sized chunks: per
worker thread only a few small float64 buffers and the float32 ratios near the wanted
quantiles (about an eighth of one tensor) exist at a time. Bit-identical arrays are detected
first and cost one comparison pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from netsurgery.analysis.cost import bit_identical

EPSILON = 1e-8
QUANTILES = (("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p95", 0.95), ("max", 1.0))
_CHUNK = 1 << 16  # elements per float64 block: small enough to stay in cache between passes


# -- results ------------------------------------------------------------------------------
@dataclass
class Quantiles:
    """Quantiles of the element-wise relative change |Δ| / (|base| + ε)."""

    p25: float
    median: float
    p75: float
    p95: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name, _ in QUANTILES}


@dataclass
class TensorDiff:
    """How one array of one layer changed (see the module docstring for the definitions)."""

    name: str
    shape: tuple[int, ...]
    rel_mean_abs: float
    rel_l2: float
    cosine: float
    identical: bool
    quantiles: Quantiles

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


# -- statistics ---------------------------------------------------------------------------
# Speed: the statistics run over a tensor in chunks of _CHUNK elements that stay in cache
# between numpy passes (one pass per operation would otherwise stream the tensor from memory
# a dozen times). Quantiles avoid a full np.partition of large tensors: a random sample of the
# ratios brackets each wanted rank, the chunk loop counts the elements below each bracket and
# keeps only those inside, and the exact order statistics are selected from those. When a
# bracket misses its rank (an unlucky sample) or the data hold NaN or Inf, the exact
# full-array partition is used instead (NaN sorts last), so the result never depends on the
# sample.
_SAMPLE = 16384  # sampled ratios to place the brackets
_BRACKET_MIN = 1 << 17  # smaller tensors: partition the whole ratio array
_KEY_SHIFT = 16  # bracket edges snap to the top 16 bits of the float32 ratio


def _ratio(num: float, den: float) -> float:
    """num/den with 0/0 = 0 and x/0 = inf."""
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _flat32(arr: np.ndarray) -> np.ndarray:
    # plain ndarray (not np.memmap: its subclass hooks cost time on every slice)
    return np.ascontiguousarray(arr, dtype=np.float32).view(np.ndarray).reshape(-1)


def _positions(n: int) -> list[float]:
    """Fractional ranks of p25, median, p75, p95 (numpy's "linear" method)."""
    return [q * (n - 1) for _, q in QUANTILES[:-1]]


def _interpolate(positions: list[float], at: dict[int, float], maximum: float) -> Quantiles:
    out = []
    for p in positions:
        lo, hi = math.floor(p), math.ceil(p)
        a, b = at[lo], at[hi]
        out.append(a + (b - a) * (p - lo) if hi != lo else a)
    return Quantiles(*out, maximum)


def _quantiles(values: np.ndarray) -> Quantiles:
    """Exact quantiles of ``values`` (float32, partitioned in place; NaN sorts last)."""
    n = values.size
    if n == 0:
        return Quantiles(0.0, 0.0, 0.0, 0.0, 0.0)
    positions = _positions(n)
    ranks = sorted({math.floor(p) for p in positions} | {math.ceil(p) for p in positions}
                   | {n - 1})
    values.partition(ranks)
    return _interpolate(positions, {k: float(values[k]) for k in ranks}, float(values[n - 1]))


@dataclass
class _Brackets:
    """Disjoint ranges of ratio bit patterns (non-negative float32 order = uint32 order)
    expected to hold the wanted ranks; ``lut`` marks their 16-bit keys."""

    lut: np.ndarray  # bool[65536]
    lows: list[int]  # first uint32 pattern of each range
    highs: list[int]  # last uint32 pattern of each range


def _sample_brackets(b32: np.ndarray, t32: np.ndarray) -> _Brackets | None:
    """Brackets around each wanted quantile of the ratios of a fixed random sample, ±4.5
    binomial standard deviations wide (a miss only costs the exact fallback)."""
    n = b32.size
    idx = np.sort(np.random.default_rng(0).integers(0, n, _SAMPLE))
    b = b32[idx].astype(np.float64)
    t = t32[idx].astype(np.float64)
    sample = (np.abs(t - b) / (np.abs(b) + EPSILON)).astype(np.float32)
    if np.isnan(sample).any():
        return None
    sample.sort()
    keys = sample.view(np.uint32) >> _KEY_SHIFT
    top = (1 << (32 - _KEY_SHIFT)) - 1
    ranges = []
    for _, q in QUANTILES[:-1]:
        center = q * (_SAMPLE - 1)
        margin = 4.5 * math.sqrt(_SAMPLE * q * (1.0 - q)) + 8.0
        lo, hi = math.floor(center - margin), math.ceil(center + margin)
        ranges.append((int(keys[lo]) if lo >= 0 else 0, int(keys[hi]) if hi < _SAMPLE else top))
    ranges.sort()
    merged = [list(ranges[0])]
    for a, b_ in ranges[1:]:
        if a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b_)
        else:
            merged.append([a, b_])
    lut = np.zeros(top + 1, dtype=bool)
    for a, b_ in merged:
        lut[a:b_ + 1] = True
    return _Brackets(lut, [a << _KEY_SHIFT for a, _ in merged],
                     [((b_ + 1) << _KEY_SHIFT) - 1 for _, b_ in merged])


_DOT_ROW = 4096  # BLAS runs a dot product this short on the calling thread
_vecdot = getattr(np, "vecdot", None) or (lambda x, y: np.einsum("...i,...i->...", x, y))


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Σ x·y in float64. Rows of _DOT_ROW elements: one long BLAS dot would wake its thread
    pool for every chunk, which costs more than the product itself."""
    m = x.size
    k = m - m % _DOT_ROW
    total = 0.0
    if k:
        total += float(_vecdot(x[:k].reshape(-1, _DOT_ROW), y[:k].reshape(-1, _DOT_ROW)).sum())
    if k < m:
        total += float(_vecdot(x[k:], y[k:]))
    return total


@dataclass
class _Sums:
    bb: float = 0.0  # Σ base²
    tt: float = 0.0  # Σ task²
    bt: float = 0.0  # Σ base·task
    dd: float = 0.0  # Σ Δ²
    abs_b: float = 0.0  # Σ |base|
    abs_d: float = 0.0  # Σ |Δ|
    maximum: float = 0.0  # max ratio
    below: list[int] = field(default_factory=list)  # ratios below each bracket
    pieces: list[np.ndarray] = field(default_factory=list)  # ratios inside the brackets


def _stream(b32: np.ndarray, t32: np.ndarray, brackets: _Brackets | None = None,
            ratio_out: np.ndarray | None = None) -> _Sums:
    """One pass over the tensor in cache-sized chunks: float64 sums and dot products, the
    ratio |Δ|/(|base|+ε) per element (into ``ratio_out`` if given), bracket bookkeeping."""
    n = b32.size
    size = min(n, _CHUNK)
    b_buf, t_buf, d_buf = np.empty(size), np.empty(size), np.empty(size)
    r_buf = np.empty(size, dtype=np.float32)
    key_buf = np.empty(size, dtype=np.uint32)
    mask_buf = np.empty(size, dtype=bool)
    s = _Sums()
    if brackets is not None:
        s.below = [0] * len(brackets.lows)
    maximum = -math.inf
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        m = stop - start
        b, t, d = b_buf[:m], t_buf[:m], d_buf[:m]
        np.copyto(b, b32[start:stop])
        np.copyto(t, t32[start:stop])
        s.bb += _dot(b, b)
        s.tt += _dot(t, t)
        s.bt += _dot(b, t)
        np.subtract(t, b, out=d)  # exact: the difference of two float32 fits a float64
        s.dd += _dot(d, d)
        np.abs(d, out=d)
        s.abs_d += float(np.add.reduce(d))
        np.abs(b, out=b)
        s.abs_b += float(np.add.reduce(b))
        b += EPSILON
        r = r_buf[:m] if ratio_out is None else ratio_out[start:stop]
        np.divide(d, b, out=r, casting="same_kind")
        if brackets is None:
            continue
        maximum = max(maximum, float(r.max()))
        u = r.view(np.uint32)
        keys, mask = key_buf[:m], mask_buf[:m]
        np.right_shift(u, _KEY_SHIFT, out=keys)
        np.take(brackets.lut, keys, out=mask, mode="clip")
        if mask.any():
            s.pieces.append(np.compress(mask, r))  # faster than r[mask] for sparse masks
        for j, low in enumerate(brackets.lows):
            if low:
                np.less(u, low, out=mask)
                s.below[j] += int(np.count_nonzero(mask))
    s.maximum = maximum
    return s


def _bracket_quantiles(s: _Sums, brackets: _Brackets, n: int) -> Quantiles | None:
    """Exact quantiles from the elements kept inside the brackets; None if a rank fell
    outside them."""
    pool = np.concatenate(s.pieces) if s.pieces else np.zeros(0, np.float32)
    pool_u = pool.view(np.uint32)
    spans = []  # (first global rank, first pool rank, count) per bracket
    for j, (low, high) in enumerate(zip(brackets.lows, brackets.highs)):
        before = int(np.count_nonzero(pool_u < low)) if low else 0
        upto = int(np.count_nonzero(pool_u <= high))
        spans.append((s.below[j], before, upto - before))
    positions = _positions(n)
    wanted = sorted({math.floor(p) for p in positions} | {math.ceil(p) for p in positions})
    pool_rank = {}
    for k in wanted:
        for first, before, count in spans:
            if first <= k < first + count:
                pool_rank[k] = before + (k - first)
                break
        else:
            return None
    values = _order_statistics(pool_u, sorted(set(pool_rank.values())))
    return _interpolate(positions, {k: float(np.uint32(values[r]).view(np.float32))
                                    for k, r in pool_rank.items()}, s.maximum)


def _order_statistics(u: np.ndarray, ranks: list[int]) -> dict[int, int]:
    """The values at sorted ``ranks`` of ``u`` (partitioned in place). Interpolation wants
    pairs of adjacent ranks: the second of a pair is the minimum of the segment after the
    first, which is cheaper than one more partition step."""
    wanted = set(ranks)
    if any(r - 1 in wanted and r - 2 in wanted for r in ranks):  # runs longer than a pair
        u.partition(ranks)
        return {r: int(u[r]) for r in ranks}
    kth = [r for r in ranks if r - 1 not in wanted]
    u.partition(kth)
    out = {p: int(u[p]) for p in kth}
    for p, stop in zip(kth, kth[1:] + [u.size]):
        if p + 1 in wanted:  # u[p+1:stop] holds the order statistics p+1..stop-1, unordered
            out[p + 1] = int(u[p + 1:stop].min())
    return out


def tensor_diff(name: str, base: np.ndarray, task: np.ndarray) -> TensorDiff:
    """Compare two float32 arrays of the same shape (see the module docstring)."""
    if base.shape != task.shape:
        raise ValueError(f"{name}: shapes differ {base.shape} vs {task.shape}")
    shape = tuple(int(v) for v in base.shape)
    b32, t32 = _flat32(base), _flat32(task)
    if bit_identical(b32, t32):
        return TensorDiff(name, shape, 0.0, 0.0, 1.0, True, Quantiles(0.0, 0.0, 0.0, 0.0, 0.0))
    n = b32.size
    quantiles = None
    brackets = _sample_brackets(b32, t32) if n >= _BRACKET_MIN else None
    if brackets is not None:
        s = _stream(b32, t32, brackets)
        if math.isfinite(s.abs_d) and math.isfinite(s.abs_b):  # NaN/Inf: exact path below
            quantiles = _bracket_quantiles(s, brackets, n)
    if quantiles is None:
        ratio = np.empty(n, dtype=np.float32)
        s = _stream(b32, t32, ratio_out=ratio)
        quantiles = _quantiles(ratio)
    if s.bb == 0.0 and s.tt == 0.0:
        cosine = 1.0
    elif s.bb == 0.0 or s.tt == 0.0:
        cosine = 0.0
    else:
        cosine = min(1.0, max(-1.0, s.bt / math.sqrt(s.bb * s.tt)))
    return TensorDiff(name, shape, _ratio(s.abs_d, s.abs_b),
                      _ratio(math.sqrt(s.dd), math.sqrt(s.bb)), cosine, False, quantiles)


__all__ = ["EPSILON", "QUANTILES", "Quantiles", "TensorDiff", "tensor_diff"]
