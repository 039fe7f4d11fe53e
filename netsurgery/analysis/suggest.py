"""``suggest-k``: choose the share point k without a full sweep.

Every candidate's tail trains on cached trunk features (:mod:`netsurgery.analysis.tails`:
the frozen trunk's outputs are computed once per image for all candidates, and each tail
trains exactly as the start of ``sweep``'s own run of that k) for a share of the full
training. Its *training speed* — the mean training loss over the last third of that short
run — ranks it: a tail that fits the task faster ends higher, as measured in
docs/suggest-k.md. The predicted mAP@0.5 is the least-squares line of the short runs'
validation mAPs against their speed, read at each candidate's speed: one noisy evaluation per
candidate is averaged with the others', and the prediction keeps the speed's order.

The recommendation is the largest k that is within a tolerance of the best candidate with
probability ≥ 0.8, each prediction perturbed by the line's residual spread; when the
predictions are too uncertain for any, the k most often within tolerance. Its confidence is
that probability.
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

METHOD = "training speed of short runs on cached trunk features, mAP fitted against speed"
SPEED_WINDOW = 1 / 3  # the speed is the mean training loss over this last share of a run
MIN_ITERATIONS = 8  # per candidate, whatever the budget
SIGMA_FLOOR = 0.005  # 0.5 mAP points: no prediction is more certain than that
SURE_LEVEL = 0.8  # a k is recommended when it is within tolerance with this probability
CONFIDENCE_DRAWS = 4000


@dataclass
class CandidatePrediction:
    """One candidate k: the predicted mAP (0..1) and what sharing 0..k saves."""

    k: int
    predicted_map: float
    map_sigma: float  # uncertainty of predicted_map (0..1)
    observed_map: float  # validation mAP@0.5 at the end of the short run
    iterations: int  # trained in the short run
    speed_loss: float  # mean training loss over the short run's last third (lower: faster)
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
    confidence: float  # 0..1: probability that the recommended k is within tolerance
    tolerance: float  # mAP points
    target_iterations: int  # the training the prediction is for
    budget: float
    method: str = METHOD
    dtype: str = "float32"  # the short runs' arithmetic (float32 or bfloat16 autocast)
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


def speed_loss(losses: Sequence[float], window: float = SPEED_WINDOW) -> float:
    """Training speed of a short run: the mean training loss over its last ``window``
    share of iterations (lower: the tail fits the task faster)."""
    if not losses:
        raise ValueError("no training iterations")
    tail = losses[-max(1, round(len(losses) * window)):]
    return float(sum(tail) / len(tail))


def fit_against_speed(speeds: Mapping[int, float], maps: Mapping[int, float]
                      ) -> tuple[dict[int, float], float]:
    """Predicted mAP per k: the least-squares line of ``maps`` against ``speeds`` read at
    each speed (a faster tail never predicted lower: a rising line is taken as flat), and
    the residual spread around it (at least :data:`SIGMA_FLOOR`)."""
    ks = sorted(speeds)
    x = np.array([speeds[k] for k in ks], dtype=float)
    y = np.array([maps[k] for k in ks], dtype=float)
    slope = 0.0
    if len(ks) > 1 and np.ptp(x) > 0:
        slope = min(0.0, float(np.polyfit(x, y, 1)[0]))
    fitted = y.mean() + slope * (x - x.mean())
    dof = max(len(ks) - 2, 1)
    sigma = float(np.sqrt(np.sum((y - fitted) ** 2) / dof)) if len(ks) > 1 else 0.0
    return ({k: float(np.clip(v, 0.0, 1.0)) for k, v in zip(ks, fitted)},
            max(sigma, SIGMA_FLOOR))


def recommend(predicted: Mapping[int, float], tolerance: float) -> int:
    """The largest k whose predicted mAP (0..1) is within ``tolerance`` mAP points of the
    best candidate's."""
    if not predicted:
        raise ValueError("no candidates")
    best = max(predicted.values())
    return max(k for k, m in predicted.items() if m >= best - tolerance / 100 - 1e-12)


def recommend_under_uncertainty(predicted: Mapping[int, float], sigma: Mapping[int, float],
                                tolerance: float, level: float = SURE_LEVEL,
                                draws: int = CONFIDENCE_DRAWS, seed: int = 0
                                ) -> tuple[int, float]:
    """The largest k that is within ``tolerance`` mAP points of the best candidate with
    probability ≥ ``level``, each candidate's mAP drawn from normal(predicted, sigma)
    independently; when none is that sure, the k most often within tolerance (the largest
    among ties). Returns k and that probability (the recommendation's confidence).

    With exact predictions (sigma → 0) this is :func:`recommend`; with uncertain ones it
    shares no more than the predictions can vouch for."""
    if not predicted:
        raise ValueError("no candidates")
    ks = sorted(predicted)
    mean = np.array([predicted[k] for k in ks])
    sd = np.array([sigma[k] for k in ks])
    samples = mean + sd * np.random.default_rng(seed).standard_normal((draws, len(ks)))
    within = samples >= samples.max(axis=1, keepdims=True) - tolerance / 100 - 1e-12
    chance = dict(zip(ks, within.mean(axis=0).tolist()))
    sure = [k for k in ks if chance[k] >= level]
    if sure:
        return max(sure), chance[max(sure)]
    top = max(chance.values())
    chosen = max(k for k in ks if chance[k] == top)
    return chosen, chance[chosen]


# --------------------------------------------------------------------------- the run


def short_iterations(target: int, budget: float) -> int:
    """Iterations of each candidate's short run: ``budget`` of the full training."""
    return min(target, max(MIN_ITERATIONS, round(target * budget)))


def suggest_k(cfg: str, weights: str, data: str, base_cfg: str | None = None,
              candidates: Sequence[int] | None = None, iterations: int | None = None,
              budget: float = 0.25, tolerance: float = 2.0, batch: int | None = None,
              lr: float | None = None, seed: int = 0, dtype: str = "auto",
              log: Callable[[str], None] = lambda m: None) -> Suggestion:
    """Predict, for each candidate k, the validation mAP@0.5 that training layers k+1.. of
    the task network ``cfg`` from the base ``weights`` for ``iterations`` (default: the
    cfg's max_batches) would reach, as ``train``/``sweep`` do it without augmentation; and
    recommend the largest k within ``tolerance`` mAP points of the best. Each candidate
    trains ``budget`` × ``iterations``, computing in ``dtype`` (``auto``: bfloat16 where the
    CPU has it in hardware, else float32); see the module docstring for the prediction."""
    from netsurgery.training.config import default_base_cfg

    from .tails import TailRun, cache_features, load_task, resolve_dtype

    if not 0 < budget <= 1:
        raise UsageError(f"--budget {budget}: expected a fraction in (0, 1]")
    if not tolerance >= 0:
        raise UsageError(f"--tolerance {tolerance}: expected a number of mAP points >= 0")
    if iterations is not None and iterations < 1:
        raise UsageError(f"iterations={iterations}: expected at least 1 (set --iterations or "
                         "max_batches in [net])")
    asked, dtype = dtype, resolve_dtype(dtype)
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
        f"iterations (batch {task.batch}, {dtype})")
    cache = cache_features(task, ks, log=log)
    log(f"trunk features of {len(cache.images)} training + {len(cache.valid_ids)} validation "
        f"images: {cache.nbytes / 2**20:.0f} MiB in {cache.seconds:.1f} s")
    speeds, observed, seconds = {}, {}, {}
    for k in ks:
        run = TailRun(task, cache, k, dtype)
        run.train(short)
        speeds[k] = speed_loss(run.losses)
        observed[k] = run.evaluate().map
        seconds[k] = run.seconds
        log(f"k={k}: training loss {speeds[k]:.3f} over its last third, mAP@0.5 "
            f"{observed[k] * 100:.1f} % after {short} iterations ({run.seconds:.0f} s)")
    predicted, sigma = fit_against_speed(speeds, observed)
    results = []
    for k in ks:
        share = share_cost(task.base_net, k)
        results.append(CandidatePrediction(
            k, predicted[k], sigma, observed[k], short, speeds[k], share.params_fraction,
            share.bflops_fraction, share.params_shared, share.bflops_shared, seconds[k]))
    # the draws integrate numerically, fixed seed: the same predictions, the same answer
    chosen, confidence = recommend_under_uncertainty(predicted, {k: sigma for k in ks},
                                                     tolerance)
    return Suggestion(results, chosen, confidence, tolerance, target, budget, dtype=dtype,
                      feature_seconds=cache.seconds, seconds=time.perf_counter() - t0,
                      cpu_seconds=time.process_time() - cpu0,
                      notes=reading_notes(short, target, confidence, asked, dtype))


def reading_notes(short: int, target: int, confidence: float, asked: str, dtype: str
                  ) -> list[str]:
    """What a reader of the table should know: the level of the values, a recommendation
    that only takes the safe end, and float32 chosen for want of bfloat16 hardware."""
    notes = []
    if short < target:
        notes.append(f"the predicted mAP is the level after {short} of {target} iterations, "
                     "not after the full training: it ranks the candidates "
                     "(docs/suggest-k.md)")
    if confidence < SURE_LEVEL:
        notes.append(f"no k is within tolerance with probability {SURE_LEVEL:g}: the "
                     "recommendation is the most probable k, the safe end of the ranking; "
                     "confirm with a sweep over the fastest candidates")
    if asked == "auto" and dtype == "float32":
        notes.append("float32: this CPU has no bfloat16 in hardware (with it the short runs "
                     "train 1.7-1.9 times faster)")
    return notes


# --------------------------------------------------------------------------- output


def suggestion_to_json(s: Suggestion) -> dict:
    """``{"candidates": [{"k", "predicted_map", "params_fraction", "bflops_fraction", ...}],
    "recommended", "confidence", "method", "seconds", ...}`` (mAP values in 0..1)."""
    out = asdict(s)
    out["candidates"] = [asdict(c) for c in s.candidates]
    out["confidence_level"] = s.confidence_level
    return out


def write_json(s: Suggestion, path: str | Path) -> None:
    """``path`` as a ``netsurgery.suggest-k`` document (docs/schemas/suggest-k.schema.json)."""
    write_document(path, "suggest-k", suggestion_to_json(s))


def format_suggestion(s: Suggestion, measured: Mapping[int, float] | None = None) -> str:
    """The table printed by the CLI; ``measured`` (k -> mAP 0..1) adds a column."""
    head = "    k  speed loss  predicted mAP@0.5   params shared  FLOPs shared"
    lines = [head + ("  measured" if measured else "")]
    for c in s.candidates:
        mark = " <" if c.k == s.recommended else "  "
        row = (f"{c.k:5d}  {c.speed_loss:10.3f}  {c.predicted_map * 100:6.2f} ± "
               f"{c.map_sigma * 100:4.2f} %  {c.params_fraction * 100:12.1f}%  "
               f"{c.bflops_fraction * 100:11.1f}%")
        if measured:
            value = measured.get(c.k)
            row += f"  {value * 100:7.2f}%" if value is not None else f"  {'-':>8}"
        lines.append(row + mark)
    lines.append(f"recommended k = {s.recommended}: within {s.tolerance:g} mAP points of the "
                 f"best candidate with probability {s.confidence:.2f} ({s.confidence_level}; "
                 f"the largest k with at least {SURE_LEVEL:g}, else the most probable)")
    lines += [f"note: {note}" for note in s.notes]
    lines.append(f"method: {s.method}; {s.candidates[0].iterations if s.candidates else 0} "
                 f"of {s.target_iterations} iterations per candidate in {s.dtype}; "
                 f"{s.seconds:.0f} s")
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
