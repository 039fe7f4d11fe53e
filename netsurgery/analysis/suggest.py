"""``suggest-k``: choose the share point k without a full sweep.

For every candidate k the tail k+1.. is trained briefly, the way ``sweep`` would train it
(:mod:`netsurgery.analysis.tails`: the frozen trunk's outputs are computed once per image for
all candidates, the tails train on them), its validation mAP@0.5 is measured at a few
checkpoints, and the mAP the full training would reach is predicted from that learning
curve. The recommendation is the largest k whose predicted mAP is within a tolerance of the
best candidate's; its confidence is the share of draws, with each prediction perturbed by its
own uncertainty, that recommend the same k. docs/suggest-k.md reports what has been measured of
how well this predicts sweeps (so far: not enough to trust it).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from netsurgery.darknet.network import Network
from netsurgery.errors import UsageError
from netsurgery.jsonout import write_document

from .cost import share_cost

METHOD = "cached-trunk short training + learning-curve extrapolation"
CHECKPOINTS = 4  # mAP measurements per candidate along its short run
MIN_ITERATIONS = 8  # per candidate, whatever the budget
SIGMA_FLOOR = 0.005  # 0.5 mAP points: no prediction is more certain than that
CONFIDENCE_DRAWS = 4000


@dataclass
class CandidatePrediction:
    """One candidate k: the predicted mAP (0..1) and what sharing 0..k saves."""

    k: int
    predicted_map: float
    map_sigma: float  # uncertainty of predicted_map (0..1)
    observed_map: float  # at the last checkpoint of the short run
    iterations: int  # trained in the short run
    curve: list[tuple[int, float]]  # (iteration, mAP) checkpoints
    params_fraction: float
    bflops_fraction: float
    params_shared: int
    bflops_shared: float
    seconds: float  # training and evaluating this candidate


@dataclass
class Suggestion:
    """The answer of :func:`suggest_k`."""

    candidates: list[CandidatePrediction]
    recommended: int
    confidence: float  # 0..1: share of perturbed draws that recommend the same k
    tolerance: float  # mAP points
    target_iterations: int  # the training the prediction is for
    budget: float
    method: str = METHOD
    feature_seconds: float = 0.0
    seconds: float = 0.0  # wall time
    cpu_seconds: float = 0.0  # of this process, all threads (comparable on a busy machine)
    notes: list[str] = field(default_factory=list)

    @property
    def confidence_level(self) -> str:
        return "high" if self.confidence >= 0.8 else "medium" if self.confidence >= 0.5 \
            else "low"


# --------------------------------------------------------------------------- candidates


def block_ends(network: Network) -> list[int]:
    """Default candidates: the ends of the network's blocks, i.e. the last layer before each
    spatial downsampling and every layer a later [route] reads (where the network branches),
    limited to layers before the first head's own convolution."""
    last = min(network.heads()) - 2  # the conv before the first [yolo] must stay trainable
    ends = set()
    for spec in network.layers[1:]:
        prev = network.layers[spec.index - 1].out_shape
        if spec.out_shape.h < prev.h or spec.out_shape.w < prev.w:
            ends.add(spec.index - 1)
        if spec.type_name == "route":
            ends.update(j for j in spec.inputs() if j != spec.index - 1)
    return sorted(k for k in ends if 0 <= k <= last)


def check_candidates(network: Network, ks: Sequence[int]) -> list[int]:
    """Sorted unique candidates; each must leave every head's conv trainable."""
    if not ks:
        raise UsageError("--candidates: expected at least one layer index")
    limit = min(network.heads()) - 2
    bad = [k for k in ks if not 0 <= k <= limit]
    if bad:
        raise UsageError(f"--candidates {','.join(map(str, bad))}: expected layer indices "
                         f"0..{limit} of {network.path} (the conv before each [yolo] must "
                         "stay trainable)")
    return sorted(set(ks))


# --------------------------------------------------------------------------- prediction


def checkpoints(iterations: int, n: int = CHECKPOINTS) -> list[int]:
    """Iterations at which the short run's mAP is measured: ``n`` evenly spaced, the last
    at ``iterations``."""
    return sorted({max(1, round(iterations * (i + 1) / n)) for i in range(n)})


def extrapolate(curve: Sequence[tuple[int, float]], target: int,
                method: str = "sqrt") -> tuple[float, float]:
    """Predicted mAP at ``target`` iterations from (iteration, mAP) checkpoints, and its
    uncertainty (both 0..1); docs/suggest-k.md reports how far this has been validated.

    ``sqrt``: least squares of mAP = a - b/sqrt(iteration) on the checkpoints (a learning
    curve that flattens), evaluated at ``target``; b < 0 (a falling curve) is taken as flat.
    ``plateau``: the mean of the second half of the checkpoints. The uncertainty is the
    spread of the checkpoints around the fit (at least :data:`SIGMA_FLOOR`)."""
    its = np.array([c[0] for c in curve], dtype=float)
    maps = np.array([c[1] for c in curve], dtype=float)
    late = maps[len(maps) // 2:]  # the second half of the run: past the first rise
    if method == "plateau" or len(its) < 3:
        sigma = float(late.std(ddof=1)) if len(late) > 1 else 0.0
        return float(late.mean()), max(sigma, SIGMA_FLOOR)
    if method != "sqrt":
        raise ValueError(f"extrapolate: unknown method {method!r}")
    x = 1 / np.sqrt(its)
    slope, intercept = np.polyfit(x, maps, 1)  # maps = intercept + slope * x, slope = -b
    if slope > 0:  # falling with more training: no rise left to extrapolate
        slope, intercept = 0.0, float(maps.mean())
    fitted = intercept + slope * x
    residual = float(np.sqrt(np.sum((maps - fitted) ** 2) / max(len(maps) - 2, 1)))
    predicted = float(np.clip(intercept + slope / math.sqrt(target), 0.0, 1.0))
    return predicted, max(residual, SIGMA_FLOOR)


def recommend(predicted: Mapping[int, float], tolerance: float) -> int:
    """The largest k whose predicted mAP (0..1) is within ``tolerance`` mAP points of the
    best candidate's."""
    if not predicted:
        raise ValueError("no candidates")
    best = max(predicted.values())
    return max(k for k, m in predicted.items() if m >= best - tolerance / 100 - 1e-12)


def recommendation_confidence(predicted: Mapping[int, float], sigma: Mapping[int, float],
                              tolerance: float, draws: int = CONFIDENCE_DRAWS,
                              seed: int = 0) -> float:
    """Share of draws (each candidate's mAP ~ normal(predicted, sigma), independent) whose
    recommendation is the same k as the predictions' own."""
    chosen = recommend(predicted, tolerance)
    ks = sorted(predicted)
    mean = np.array([predicted[k] for k in ks])
    sd = np.array([sigma[k] for k in ks])
    rng = np.random.default_rng(seed)
    samples = mean + sd * rng.standard_normal((draws, len(ks)))
    best = samples.max(axis=1, keepdims=True)
    within = samples >= best - tolerance / 100 - 1e-12
    # the largest k within tolerance: the last True column of each row
    last = len(ks) - 1 - np.argmax(within[:, ::-1], axis=1)
    return float(np.mean(np.array(ks)[last] == chosen))


# --------------------------------------------------------------------------- the run


def short_iterations(target: int, budget: float) -> int:
    """Iterations of each candidate's short run: ``budget`` of the full training."""
    return min(target, max(MIN_ITERATIONS, round(target * budget)))


def suggest_k(cfg: str, weights: str, data: str, base_cfg: str | None = None,
              candidates: Sequence[int] | None = None, iterations: int | None = None,
              budget: float = 0.2, tolerance: float = 2.0, batch: int | None = None,
              lr: float | None = None, seed: int = 0, n_checkpoints: int = CHECKPOINTS,
              log: Callable[[str], None] = lambda m: None) -> Suggestion:
    """Predict, for each candidate k, the validation mAP@0.5 that training layers k+1.. of
    the task network ``cfg`` from the base ``weights`` for ``iterations`` (default: the
    cfg's max_batches) would reach, as ``train``/``sweep`` do it without augmentation; and
    recommend the largest k within ``tolerance`` mAP points of the best. ``budget``: each
    candidate trains for that fraction of ``iterations``, its mAP measured at
    ``n_checkpoints`` evenly spaced iterations."""
    from netsurgery.training.config import default_base_cfg

    from .tails import TailRun, cache_features, load_task

    if not 0 < budget <= 1:
        raise UsageError(f"--budget {budget}: expected a fraction in (0, 1]")
    if not tolerance >= 0:
        raise UsageError(f"--tolerance {tolerance}: expected a number of mAP points >= 0")
    if iterations is not None and iterations < 1:
        raise UsageError(f"iterations={iterations}: expected at least 1 (set --iterations or "
                         "max_batches in [net])")
    t0, cpu0 = time.perf_counter(), time.process_time()
    base_cfg = base_cfg or str(default_base_cfg(weights, cfg))
    task = load_task(cfg, weights, base_cfg, data, batch, lr, seed)
    ks = check_candidates(task.network, candidates if candidates is not None
                          else block_ends(task.network))
    target = iterations if iterations is not None else task.schedule.max_batches
    if target < 1:
        raise UsageError(f"iterations={target}: expected at least 1 (set --iterations or "
                         "max_batches in [net])")
    short = short_iterations(target, budget)
    log(f"candidates k = {', '.join(map(str, ks))}; each trained {short} of {target} "
        f"iterations (batch {task.batch})")
    cache = cache_features(task, ks, log=log)
    log(f"trunk features of {len(cache.images)} training + {len(cache.valid_ids)} validation "
        f"images: {cache.nbytes / 2**20:.0f} MiB in {cache.seconds:.1f} s")
    results = []
    for k in ks:
        run = TailRun(task, cache, k)
        curve = []
        for stop in checkpoints(short, n_checkpoints):
            run.train(stop)
            curve.append((stop, run.evaluate().map))
        predicted, sigma = extrapolate(curve, target)
        share = share_cost(task.base_net, k)
        results.append(CandidatePrediction(
            k, predicted, sigma, curve[-1][1], short, curve, share.params_fraction,
            share.bflops_fraction, share.params_shared, share.bflops_shared, run.seconds))
        log(f"k={k}: mAP@0.5 " + ", ".join(f"{m * 100:.1f}" for _, m in curve)
            + f" at {', '.join(str(i) for i, _ in curve)} iterations -> predicted "
            f"{predicted * 100:.1f} ± {sigma * 100:.1f} % ({run.seconds:.0f} s)")
    predicted = {c.k: c.predicted_map for c in results}
    chosen = recommend(predicted, tolerance)
    confidence = recommendation_confidence(predicted, {c.k: c.map_sigma for c in results},
                                           tolerance, seed=seed)
    return Suggestion(results, chosen, confidence, tolerance, target, budget,
                      feature_seconds=cache.seconds, seconds=time.perf_counter() - t0,
                      cpu_seconds=time.process_time() - cpu0)


# --------------------------------------------------------------------------- output


def suggestion_to_json(s: Suggestion) -> dict:
    """``{"candidates": [{"k", "predicted_map", "params_fraction", "bflops_fraction", ...}],
    "recommended", "confidence", "method", "seconds", ...}`` (mAP values in 0..1)."""
    out = asdict(s)
    out["candidates"] = [dict(asdict(c), curve=[list(p) for p in c.curve])
                         for c in s.candidates]
    out["confidence_level"] = s.confidence_level
    return out


def write_json(s: Suggestion, path: str | Path) -> None:
    """``path`` as a ``netsurgery.suggest-k/1`` document (docs/schemas/suggest-k.schema.json)."""
    write_document(path, "suggest-k", suggestion_to_json(s))


def format_suggestion(s: Suggestion, measured: Mapping[int, float] | None = None) -> str:
    """The table printed by the CLI; ``measured`` (k -> mAP 0..1) adds a column."""
    head = "    k  predicted mAP@0.5   params shared  FLOPs shared"
    lines = [head + ("  measured" if measured else "")]
    for c in s.candidates:
        mark = " <" if c.k == s.recommended else "  "
        row = (f"{c.k:5d}  {c.predicted_map * 100:6.2f} ± {c.map_sigma * 100:4.2f} %  "
               f"{c.params_fraction * 100:12.1f}%  {c.bflops_fraction * 100:11.1f}%")
        if measured:
            value = measured.get(c.k)
            row += f"  {value * 100:7.2f}%" if value is not None else f"  {'-':>8}"
        lines.append(row + mark)
    lines.append(f"recommended k = {s.recommended}: the largest k within {s.tolerance:g} "
                 f"mAP points of the best prediction; confidence {s.confidence:.2f} "
                 f"({s.confidence_level})")
    lines.append(f"method: {s.method}; {s.candidates[0].iterations if s.candidates else 0} "
                 f"of {s.target_iterations} iterations per candidate; {s.seconds:.0f} s")
    return "\n".join(lines)


def load_sweep_maps(paths: Sequence[str | Path]) -> dict[int, list[float]]:
    """k -> measured mAPs (0..1), one per ``sweep.json`` that has that k."""
    out: dict[int, list[float]] = {}
    for path in paths:
        try:
            points = json.loads(Path(path).read_text())["points"]
            for p in points:
                if p["k"] >= 0:
                    out.setdefault(int(p["k"]), []).append(float(p["map"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}: expected a sweep.json written by netsurgery sweep "
                             f"({exc})") from None
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN when a side is
    constant or there are fewer than 2 pairs."""
    if len(a) != len(b) or len(a) < 2:
        return math.nan

    def ranks(v: Sequence[float]) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        values = np.asarray(v, dtype=float)[order]
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and values[j + 1] == values[i]:
                j += 1
            r[order[i:j + 1]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])
