"""A merged network in PyTorch that runs only what is asked: ``model(x, heads=["text"])``
computes the shared trunk once and that head's tail; a trunk computed before can be passed
back in so several heads called later do not recompute it."""
from __future__ import annotations

import os
from typing import Sequence

import torch

from netsurgery.analysis.cost import frontier
from netsurgery.darknet.model import DarknetModel, load_model

from .heads import MergedHeads, check_heads, load_heads


class MergedModel:
    """A :class:`DarknetModel` of a merged network plus its heads description."""

    def __init__(self, model: DarknetModel, heads: MergedHeads):
        self.model = model
        self.heads = heads
        check_heads(heads, model.network)

    @property
    def head_names(self) -> list[str]:
        return [g.name for g in self.heads.groups()]

    def trunk_layers(self) -> list[int]:
        """Trunk outputs the task tails read (each task's frontier), for caching."""
        network = self.model.network
        wanted: set[int] = set()
        for group in self.heads.tasks:  # the route and the tail read the trunk 0..k
            wanted.update(frontier(network, group.share_until,
                                   range(group.route, group.tail[1] + 1)))
        return sorted(wanted)

    def trunk(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The shared outputs every task tail reads, computed once; pass as ``cache``."""
        return self.model.run(x, self.trunk_layers())

    def __call__(self, x: torch.Tensor, heads: Sequence[str] | None = None,
                 cache: dict[int, torch.Tensor] | None = None) -> dict[str, list[torch.Tensor]]:
        """{head name: [its yolo outputs]} for ``heads`` (all by default), computing only the
        layers they need."""
        names = list(heads) if heads is not None else self.head_names
        groups = [self.heads.group(n) for n in names]
        targets = [y for g in groups for y in g.yolo_layers]
        out = self.model.run(x, targets, cache)
        return {g.name: [out[y] for y in g.yolo_layers] for g in groups}

    def layers_run(self, heads: Sequence[str], cached: bool = False) -> list[int]:
        """The layer indices a call for ``heads`` executes (with a trunk cache if ``cached``)."""
        targets = [y for n in heads for y in self.heads.group(n).yolo_layers]
        have = self.trunk_layers() if cached else ()
        return list(self.model.plan(targets, have).order)


def load_merged(cfg: str | os.PathLike, weights: str | os.PathLike,
                heads: str | os.PathLike | MergedHeads, inference: bool = True) -> MergedModel:
    """Load ``OUT.cfg``/``OUT.weights``/``OUT.heads.json`` written by ``netsurgery merge``."""
    model = load_model(cfg, weights, inference=inference)
    if not isinstance(heads, MergedHeads):
        heads = load_heads(heads, model.network)
    return MergedModel(model, heads)
