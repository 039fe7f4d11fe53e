"""Train a gate's presence classifier on frozen trunk features.

The trunk is frozen, so its output at the gate's layer is computed once per image (no
augmentation: the gate must score the images the deployed network sees) and the classifier —
1×1 convolution, leaky, global average, 1×1 convolution, logistic; the same arithmetic as the
gate's Darknet layers — is fitted on those cached features with a class-balanced binary
cross-entropy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from netsurgery.darknet.model import DarknetModel
from netsurgery.detection.image import preprocess
from netsurgery.training.data import Sample


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
