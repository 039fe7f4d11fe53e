"""Freezing and the optimiser: the model as trained (:class:`TrainNet`: layers 0..K in
inference mode without autograd, their outputs optionally cached) and Darknet's SGD over the
trainable tail."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from netsurgery.analysis.cost import frontier
from netsurgery.darknet.model import DarknetModel
from netsurgery.errors import UsageError

from .schedule import Schedule


class TrainNet(nn.Module):
    """The model as trained: layers 0..K frozen (inference mode, no autograd), outputs = the
    raw inputs of the [yolo] layers.

    With ``feature_budget`` > 0 the frozen trunk's outputs are kept per image key (pass
    ``keys``), up to that many bytes: only valid when an image always gives the same input,
    i.e. without augmentation."""

    def __init__(self, model: DarknetModel, freeze_until: int, targets: Sequence[int],
                 feature_budget: int = 0):
        super().__init__()
        self.model = model
        self.freeze_until = freeze_until
        self.targets = list(targets)
        network = model.network
        # outputs of frozen layers that the trained tail reads
        self.boundary = frontier(network, freeze_until)
        self._features: dict[int, list[torch.Tensor]] = {}
        self._budget = feature_budget if freeze_until >= 0 and self.boundary else 0

    def _trunk(self, x: torch.Tensor, keys: Sequence[int] | None) -> dict[int, torch.Tensor]:
        with torch.no_grad():
            if not self._budget or keys is None:
                return self.model.run(x, self.boundary)
            missing = [k for k, key in enumerate(keys) if key not in self._features]
            got: dict[int, list[torch.Tensor]] = {}
            if missing:
                fresh = self.model.run(x[missing], self.boundary)
                for row, k in enumerate(missing):
                    per_image = [fresh[j][row].clone() for j in self.boundary]
                    got[keys[k]] = per_image
                    size = sum(t.numel() * t.element_size() for t in per_image)
                    if size <= self._budget:  # else: computed again next time
                        self._features[keys[k]] = per_image
                        self._budget -= size
            rows = [self._features.get(key) or got[key] for key in keys]
            return {j: torch.stack([r[n] for r in rows]) for n, j in enumerate(self.boundary)}

    def forward(self, x: torch.Tensor, keys: Sequence[int] | None = None) -> list[torch.Tensor]:
        cache = self._trunk(x, keys) if self.freeze_until >= 0 and self.boundary else None
        out = self.model.run(x, self.targets, cache)
        return [out[t] for t in self.targets]

    def train(self, mode: bool = True) -> "TrainNet":
        super().train(mode)  # (DarknetModel.train drops every folded BatchNorm copy)
        for module in self.model.layers[:self.freeze_until + 1]:
            module.eval()  # frozen BatchNorm keeps its statistics
            if hasattr(module, "fold"):
                module.fold()  # the frozen trunk never changes: fold its BatchNorm once
        return self


def param_groups(model: DarknetModel, trainable: Sequence[int], decay: float) -> list[dict]:
    """Darknet decays only the arrays a spec names in ``decayed_arrays`` (the kernels of
    [convolutional] and [connected])."""
    with_decay, without = [], []
    for index in trainable:
        spec = model.network.layers[index]
        for name, tensor in model.layers[index].weight_tensors():
            if not isinstance(tensor, nn.Parameter):
                continue  # rolling statistics are buffers
            if name in spec.decayed_arrays:
                with_decay.append(tensor)
            else:
                without.append(tensor)
    groups = []
    if with_decay:
        groups.append({"params": with_decay, "weight_decay": decay})
    if without:
        groups.append({"params": without, "weight_decay": 0.0})
    return groups


def freeze(model: DarknetModel, freeze_until: int) -> None:
    """No gradient for layers 0..``freeze_until``."""
    for module in model.layers[:freeze_until + 1]:
        module.requires_grad_(False)


@dataclass
class Trainer:
    """The frozen-trunk model, the layers it trains and Darknet's SGD over them."""

    net: TrainNet
    trainable: list[int]
    optimizer: torch.optim.SGD


def make_trainer(model: DarknetModel, freeze_until: int, targets: Sequence[int],
                 schedule: Schedule, start: int, feature_budget: int,
                 optimiser_state: Path | None, device: str) -> Trainer:
    """Wrap ``model`` for training from iteration ``start``: layers that feed no head get no
    gradient either; the optimiser continues from ``optimiser_state`` when given."""
    k = freeze_until
    net = TrainNet(model, k, targets, feature_budget=feature_budget)
    needed = set(model.plan(targets, net.boundary).order)
    trainable = [i for i in range(k + 1, len(model.layers)) if i in needed]
    for i in range(k + 1, len(model.layers)):
        if i not in needed:
            model.layers[i].requires_grad_(False)  # feeds no head: nothing to learn
    groups = param_groups(model, trainable, schedule.decay)
    if not groups:
        raise UsageError(f"nothing to train after layer {k}: no layer with weights")
    optimizer = torch.optim.SGD(groups, lr=schedule.rate(start), momentum=schedule.momentum)
    if optimiser_state is not None:
        optimizer.load_state_dict(torch.load(optimiser_state, map_location=device,
                                             weights_only=True))
    return Trainer(net, trainable, optimizer)
