"""Train a gate for one task of a merged network (``netsurgery gate``): its presence
classifier on frozen trunk features, its calibrated threshold, its measured pass rates.

The trunk is frozen, so its output at the gate's layer is computed once per image (no
augmentation: the gate must score the images the deployed network sees) and the classifier —
1×1 convolution, leaky, global average, 1×1 convolution, logistic; the same arithmetic as the
gate's Darknet layers — is fitted on those cached features with a class-balanced binary
cross-entropy.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from netsurgery.darknet.model import DarknetModel
from netsurgery.detection.image import preprocess
from netsurgery.errors import DataError
from netsurgery.surgery.gates import (GATE_HIDDEN, Gate, attach_gate, calibrate_threshold,
                                      check_gate_target, positives_for_misses)
from netsurgery.training.data import Sample, load_data_file, load_dataset


@dataclass
class GateWeights:
    """The gate's two 1×1 convolutions in Darknet's layout (biases[n], weights[n][c])."""

    hidden_biases: np.ndarray  # (F,)
    hidden_weights: np.ndarray  # (F, C)
    score_bias: np.ndarray  # (1,)
    score_weights: np.ndarray  # (1, F)


def trunk_features(model: DarknetModel, samples: Sequence[Sample], at: int, letterbox: bool,
                   batch_size: int = 8,
                   progress: Callable[[int, int], None] | None = None
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """Layer ``at``'s output for every image (N, C, H, W) and whether each image holds at least
    one object (the gate's target)."""
    net = model.network.net
    chunks: list[torch.Tensor] = []
    positive = np.array([len(s.labels) > 0 for s in samples], dtype=bool)
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            part = samples[start:start + batch_size]
            xs = np.stack([preprocess(s.image, net.width, net.height, letterbox)[0]
                           for s in part])
            chunks.append(model.run(torch.from_numpy(xs), [at])[at].clone())
            if progress:
                progress(start + len(part), len(samples))
    return torch.cat(chunks), positive


def _forward(params: Sequence[torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = params
    hidden = torch.nn.functional.leaky_relu(
        torch.einsum("fc,nchw->nfhw", w1, features) + b1[None, :, None, None], 0.1)
    return hidden.mean(dim=(2, 3)) @ w2.T + b2  # logits (N, 1)


def fit_gate(features: torch.Tensor, positive: np.ndarray, hidden: int = 16, epochs: int = 60,
             batch_size: int = 64, lr: float = 1e-2, weight_decay: float = 1e-4,
             seed: int = 0,
             progress: Callable[[int, int], None] | None = None) -> GateWeights:
    """Fit the classifier on cached features; positives and negatives weigh equally."""
    if positive.all() or not positive.any():
        raise ValueError("the gate needs training images with and without the task's objects")
    gen = torch.Generator().manual_seed(seed)
    channels = features.shape[1]
    w1 = (torch.randn(hidden, channels, generator=gen) / channels ** 0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(1, hidden, generator=gen) / hidden ** 0.5).requires_grad_()
    b2 = torch.zeros(1, requires_grad=True)
    params = [w1, b1, w2, b2]
    optimiser = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    target = torch.from_numpy(positive.astype(np.float32))[:, None]
    n_pos = float(positive.sum())
    pos_weight = torch.tensor([(len(positive) - n_pos) / n_pos])
    for epoch in range(epochs):
        order = torch.randperm(len(features), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                _forward(params, features[idx]), target[idx], pos_weight=pos_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if progress:
            progress(epoch + 1, epochs)
    def array(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy().astype(np.float32).copy()

    return GateWeights(array(b1), array(w1), array(b2), array(w2))


def gate_scores(weights: GateWeights, features: torch.Tensor) -> np.ndarray:
    """Presence scores in (0, 1), as the gate's Darknet layers compute them."""
    params = [torch.from_numpy(a) for a in (weights.hidden_weights, weights.hidden_biases,
                                            weights.score_weights, weights.score_bias)]
    with torch.inference_mode():
        return torch.sigmoid(_forward(params, features))[:, 0].numpy()


@dataclass
class GateReport:
    """What ``netsurgery gate`` measured."""

    head: str
    gate: Gate
    train_positives: int
    train_negatives: int
    calibration_images: int
    calibration_misses: int  # calibration positives below the threshold
    held_out_auc: float  # how well the score ranks held-out positives above negatives
    seconds: float


def _split_valid(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Calibration images (even positions of the valid list) and held-out ones (odd): the
    threshold is chosen on the first, the pass rates are measured on the second."""
    return list(samples[0::2]), list(samples[1::2])


def _auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return float("nan")
    above = (positive_scores[:, None] > negative_scores[None, :]).mean()
    ties = (positive_scores[:, None] == negative_scores[None, :]).mean()
    return float(above + 0.5 * ties)


def train_gate(merged, heads, head: str, data_path: str | os.PathLike, recall: float = 0.99,
               confidence: float = 0.95, at: int | None = None, hidden: int = GATE_HIDDEN,
               seed: int = 0, log: Callable[[str], None] = lambda m: None):
    """Gate task ``head`` of ``merged`` (a WeightedNetwork with its MergedHeads): fit the
    classifier on the ``train`` images of ``data_path`` (images with and without the task's
    objects), calibrate its threshold on half of the ``valid`` images and measure it on the
    other half. Returns the gated network, its heads and a :class:`GateReport`."""
    t0 = time.perf_counter()
    at = check_gate_target(heads, head, at)
    data = load_data_file(data_path)
    n_classes = data.require_classes()
    train = load_dataset(data.require("train"), n_classes, allow_missing=True).items
    calibration, held_out = _split_valid(
        load_dataset(data.require("valid"), n_classes, allow_missing=True).items)
    if not held_out:
        raise DataError(f"{data_path}: the valid list needs at least 2 images (half to "
                        "calibrate the threshold, half to measure it)")
    model = merged.model(inference=True)
    letterbox = bool(model.network.cfg.net.get_int("letter_box", 0))

    def features(samples: Sequence[Sample], what: str):
        def progress(done: int, total: int) -> None:
            if done == total or done % 200 < 8:
                log(f"   {what}: trunk layer {at} of {done}/{total} images")
        return trunk_features(model, samples, at, letterbox, progress=progress)

    train_features, train_positive = features(train, "train")
    if train_positive.all() or not train_positive.any():
        raise DataError(f"{data.train}: the gate needs training images with and without "
                        f"the task's objects ({int(train_positive.sum())} of {len(train)} "
                        "hold objects): make-dataset --negatives adds images without")
    log(f"   fitting the gate on {len(train)} images ({int(train_positive.sum())} positive)")
    weights = fit_gate(train_features, train_positive, hidden=hidden, seed=seed)
    del train_features
    cal_features, cal_positive = features(calibration, "calibration")
    cal = calibrate_threshold(gate_scores(weights, cal_features)[cal_positive], recall,
                              confidence)
    del cal_features
    held_features, held_positive = features(held_out, "held-out")
    held_scores = gate_scores(weights, held_features)
    passed = held_scores >= cal.threshold
    gate = Gate(at=at, layers=[0, 0], hidden=hidden, threshold=cal.threshold, recall=recall,
                confidence=confidence, positives=cal.positives,
                recall_lower_bound=cal.recall_lower_bound,
                positive_pass_rate=_rate(passed[held_positive]),
                negative_pass_rate=_rate(passed[~held_positive]),
                held_out_positives=int(held_positive.sum()),
                held_out_negatives=int((~held_positive).sum()))
    gated, gated_heads = attach_gate(merged, heads, head, at, weights, gate)
    report = GateReport(head, gate, int(train_positive.sum()), int((~train_positive).sum()),
                        len(calibration), cal.positives - cal.passing,
                        _auc(held_scores[held_positive],
                                               held_scores[~held_positive]),
                        time.perf_counter() - t0)
    return gated, gated_heads, report


def _rate(passed: np.ndarray) -> float:
    return float(passed.mean()) if len(passed) else 0.0


def format_report(report: GateReport) -> str:
    g = report.gate
    lines = [
        f"gate for head '{report.head}' at layer {g.at} (layers {g.layers[0]}..{g.layers[1]}), "
        f"threshold {g.threshold:.4g}",
        f"  trained on {report.train_positives} positive + {report.train_negatives} negative "
        "images",
        f"  calibrated on {g.positives} positive images of {report.calibration_images}: recall "
        f"≥ {g.recall:g} with {g.confidence:.0%} confidence (lower bound "
        f"{g.recall_lower_bound:.4f})",
        f"  held out: positives pass {g.positive_pass_rate:.2%} of {g.held_out_positives}, "
        f"negatives pass {g.negative_pass_rate:.2%} of {g.held_out_negatives} "
        f"(AUC {report.held_out_auc:.4f})",
    ]
    if report.calibration_misses < 2:  # the lowest positive scores set the threshold
        more = positives_for_misses(2, g.recall, g.confidence)
        lines.append(f"  note: the bound let the threshold leave out {report.calibration_misses} "
                     f"of {g.positives} calibration positives, so the lowest scores set it; "
                     f"with {more} or more it may leave out 2 and pass fewer images without "
                     "objects (docs/gates.md)")
    return "\n".join(lines)


def gate_files(cfg: str, weights: str, heads_path: str, head: str, data_path: str, out: str,
               recall: float = 0.99, at: int | None = None, confidence: float = 0.95,
               seed: int = 0, overwrite: bool = False,
               log: Callable[[str], None] = lambda m: None) -> GateReport:
    """The ``netsurgery gate`` job: read a merged network, gate task ``head`` and write
    ``OUT.cfg``, ``OUT.weights``, ``OUT.heads.json`` and ``OUT.names``, all or none."""
    from netsurgery.fileio import check_output
    from netsurgery.surgery.heads import load_heads
    from netsurgery.surgery.merge import merged_outputs, write_merged
    from netsurgery.surgery.weighted import load_weighted

    merged = load_weighted(cfg, weights)
    heads = load_heads(heads_path, merged.network)
    outs = merged_outputs(out, heads.common_classes is not None)
    for o in outs:
        check_output(o, [cfg, weights, heads_path, data_path], overwrite)
    gated, gated_heads, report = train_gate(merged, heads, head, data_path, recall, confidence,
                                            at, seed=seed, log=log)
    write_merged(gated, gated_heads, out)
    return report
