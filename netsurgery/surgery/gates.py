"""Gated heads: a tiny presence classifier on the shared trunk decides, per image, whether a
task's tail runs at all (a two-stage cascade whose first stage is nearly free, because the trunk
is computed anyway for the base head).

A gate is ordinary Darknet layers appended after the merged network, so Darknet and OpenCV load
it as one more output::

    [route] layers=AT                      the trunk output the gate reads
    [convolutional] size=1 filters=F leaky local presence detectors
    [avgpool]                              global average: how much of the image fires
    [convolutional] size=1 filters=1 logistic   presence score in (0, 1)

The threshold is calibrated on validation images that hold the task's objects: the largest
score threshold whose recall on those positives is at least ``recall`` with ``confidence``
(one-sided Clopper–Pearson lower bound), so the tail is skipped on as many images as possible
while the share of positive images it still sees is guaranteed statistically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from netsurgery.errors import UsageError

GATE_HIDDEN = 16  # local detectors before the pooling (AUC measured: see docs/gates.md)


GATE_LAYERS = 4  # route, 1×1 conv, avgpool, 1×1 conv (see gate_sections)


@dataclass
class Gate:
    """A task's gate inside a merged network, stored with the task in the heads file."""

    at: int  # the base layer the gate reads (computed anyway for the base head)
    layers: list[int]  # [first, last] merged indices of the gate branch; last = the score
    hidden: int  # filters of the first 1×1 convolution
    threshold: float  # the tail runs on an image when its score ≥ threshold
    recall: float  # the target share of positive images passing ...
    confidence: float  # ... shown with this confidence on the calibration images
    positives: int  # calibration images holding at least one object of the task
    recall_lower_bound: float  # the Clopper–Pearson bound reached at the threshold
    positive_pass_rate: float  # measured on the held-out validation images
    negative_pass_rate: float
    held_out_positives: int
    held_out_negatives: int

    @property
    def score_layer(self) -> int:
        return self.layers[1]

    def to_json(self) -> dict:
        return {key: getattr(self, key) for key in GATE_KEYS}


GATE_KEYS = tuple(f.name for f in fields(Gate))


def _log_binom_pmf(i: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def binomial_upper_tail(successes: int, trials: int, p: float) -> float:
    """P(X ≥ successes) for X ~ Binomial(trials, p)."""
    return math.fsum(math.exp(_log_binom_pmf(i, trials, p)) for i in range(successes, trials + 1))


def clopper_pearson_lower(successes: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound of a binomial proportion (Clopper–Pearson): the p at
    which seeing ``successes`` or more in ``trials`` has probability 1 − confidence."""
    if not 0 <= successes <= trials or trials <= 0:
        raise ValueError(f"need 0 ≤ successes ≤ trials and trials > 0, got {successes}/{trials}")
    if successes == 0:
        return 0.0
    if successes == trials:
        return (1.0 - confidence) ** (1.0 / trials)  # closed form of the same equation
    alpha = 1.0 - confidence
    lo, hi = 0.0, successes / trials
    for _ in range(100):  # P(X ≥ s | p) grows with p: bisect for the level alpha
        mid = 0.5 * (lo + hi)
        if binomial_upper_tail(successes, trials, mid) < alpha:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def minimum_positives(recall: float, confidence: float = 0.95) -> int:
    """The fewest positive images that can show ``recall`` at ``confidence`` (all passing)."""
    return math.ceil(math.log(1.0 - confidence) / math.log(recall))


def positives_for_misses(misses: int, recall: float, confidence: float = 0.95) -> int:
    """The fewest calibration positives that still show ``recall`` at ``confidence`` when
    ``misses`` of them score below the threshold: what lets the threshold rise above the
    lowest-scoring positives (the bound grows with the count at a fixed number of misses)."""
    lo = minimum_positives(recall, confidence) + misses  # not enough: misses count too
    hi = lo
    while clopper_pearson_lower(hi - misses, hi, confidence) < recall:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the bound at a fixed number of misses grows with the positives
        mid = (lo + hi) // 2
        if clopper_pearson_lower(mid - misses, mid, confidence) >= recall:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass
class Calibration:
    threshold: float
    passing: int  # positives with score ≥ threshold
    positives: int
    recall_lower_bound: float


def calibrate_threshold(positive_scores: Sequence[float], recall: float,
                        confidence: float = 0.95) -> Calibration:
    """The largest threshold whose pass rate on the positives is ≥ ``recall`` with
    ``confidence`` (one-sided Clopper–Pearson). Raises when there are too few positives for any
    threshold to show it."""
    if not 0.0 < recall < 1.0:
        raise UsageError(f"--recall {recall}: expected a number between 0 and 1 (exclusive)")
    if not 0.0 < confidence < 1.0:
        raise UsageError(f"confidence {confidence}: expected a number between 0 and 1")
    scores = np.sort(np.asarray(positive_scores, dtype=np.float64))[::-1]
    n = len(scores)
    need = minimum_positives(recall, confidence)
    if n < need:
        raise UsageError(f"{n} validation images hold the task's objects; showing recall "
                         f"{recall:g} at {confidence:.0%} confidence needs at least {need}: "
                         "add positives to the validation list or lower --recall")
    # the bound grows with the number passing: find the fewest passing that reach the target
    passing = next(j for j in range(1, n + 1)
                   if clopper_pearson_lower(j, n, confidence) >= recall)
    threshold = float(scores[passing - 1])
    passing = int(np.count_nonzero(scores >= threshold))  # ties pass together
    return Calibration(threshold, passing, n, clopper_pearson_lower(passing, n, confidence))


def gate_sections(at: int, hidden: int) -> list:
    """The gate's Darknet layers, reading trunk layer ``at`` (see the module docstring)."""
    from netsurgery.darknet.cfg import make_section

    conv = {"size": 1, "stride": 1, "pad": 0}
    return [make_section("route", {"layers": [at]}),
            make_section("convolutional", {"filters": hidden, **conv, "activation": "leaky"}),
            make_section("avgpool"),
            make_section("convolutional", {"filters": 1, **conv, "activation": "logistic"})]


def gate_arrays(weights) -> list[dict[str, np.ndarray] | None]:
    """Per gate layer, its arrays in .weights order (a :class:`GateWeights`; None = no
    weights), matching :func:`gate_sections`."""
    hidden, channels = weights.hidden_weights.shape
    return [None,
            {"biases": weights.hidden_biases.reshape(hidden),
             "weights": weights.hidden_weights.reshape(hidden, channels, 1, 1)},
            None,
            {"biases": weights.score_bias.reshape(1),
             "weights": weights.score_weights.reshape(1, hidden, 1, 1)}]


def check_gate_target(heads, head: str, at: int | None) -> int:
    """The layer a gate for task ``head`` reads (``at``, or the task's share point), or a
    UsageError saying why that head or layer cannot be gated."""
    group = heads.group(head)
    if group.is_base:
        raise UsageError(f"--head {head}: the base head is never gated (its detections must "
                         "stay those of the base network); expected a task head")
    if group.gate is not None:
        raise UsageError(f"--head {head}: already gated (layers {group.gate.layers[0]}.."
                         f"{group.gate.layers[1]}); gate the merged network without gates")
    at = group.share_until if at is None else at
    base_last = heads.base.tail[1]
    if not 0 <= at <= base_last:
        raise UsageError(f"--at {at}: expected a layer index of the base network 0..{base_last} "
                         "(its outputs are computed anyway for the base head)")
    return at


def attach_gate(merged, heads, head: str, at: int, weights, gate: Gate):
    """``merged`` (a WeightedNetwork) with the gate's layers appended and ``heads`` with
    ``gate`` recorded for task ``head``; both new objects. ``gate.layers`` is filled in."""
    import copy

    from .weighted import assemble

    check_gate_target(heads, head, at)
    first = len(merged)
    sections = [spec.section.copy() for spec in merged.network.layers]
    sections += gate_sections(at, weights.hidden_weights.shape[0])
    arrays = dict(merged.arrays)
    for offset, layer_arrays in enumerate(gate_arrays(weights)):
        if layer_arrays is not None:
            arrays[first + offset] = layer_arrays
    result = assemble(merged.cfg.net.copy(), sections, arrays, merged.header)
    new_heads = copy.deepcopy(heads)
    gate.layers = [first, first + GATE_LAYERS - 1]
    gate.at = at
    new_heads.group(head).gate = gate
    return result, new_heads
