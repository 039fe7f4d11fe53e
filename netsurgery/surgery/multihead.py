"""A merged network in PyTorch that runs only what is asked: ``model(x, heads=["text"])``
computes the shared trunk once and that head's tail; a trunk computed before can be passed
back in so several heads called later do not recompute it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from netsurgery.analysis.cost import frontier
from netsurgery.darknet.model import DarknetModel, load_model
from netsurgery.errors import UsageError

from .heads import HeadGroup, MergedHeads, check_heads, load_heads


@dataclass
class GatedRun:
    """How to gate one head at run time: its tail runs on an image only when the gate's score
    (layer ``score_layer``) is ≥ ``threshold``; the tail then reads ``trunk_reads`` from the
    computation already done for the whole batch."""

    score_layer: int
    threshold: float
    trunk_reads: list[int]


def gated_run(network, group: HeadGroup) -> GatedRun | None:
    """The run-time view of ``group``'s gate (None when it has none)."""
    if group.gate is None:
        return None
    reads = frontier(network, group.share_until, range(group.route, group.tail[1] + 1))
    return GatedRun(group.gate.score_layer, group.gate.threshold, reads)


@dataclass
class HeadRun:
    """A head's detection-layer outputs for the batch rows ``images`` (None: every row)."""

    outputs: dict[int, torch.Tensor]
    images: list[int] | None = None

    def rows(self, n: int) -> list[int | None]:
        """For each of ``n`` batch images, its row in ``outputs`` (None: the tail was
        skipped for it)."""
        if self.images is None:
            return list(range(n))
        where = {image: row for row, image in enumerate(self.images)}
        return [where.get(i) for i in range(n)]


def run_heads(model: DarknetModel, x: torch.Tensor,
              heads: Sequence[tuple[str, Sequence[int], GatedRun | None]],
              cache: dict[int, torch.Tensor] | None = None) -> dict[str, HeadRun]:
    """Run ``heads`` (name, detection layers, gate or None) on the batch ``x``: every ungated
    head and every gate in one pass, then each gated tail only on the images whose score
    passes (on none, it does not run at all)."""
    gated = [(name, layers, gate) for name, layers, gate in heads if gate is not None]
    if gated and not isinstance(model, DarknetModel):  # e.g. the ONNX graph in onnxruntime
        raise UsageError(f"head '{gated[0][0]}' is gated, which needs our model to skip its "
                         "tail: use --runtime torch, or --no-gates to run every tail")
    targets = {y for _, layers, gate in heads if gate is None for y in layers}
    # the trunk reads stay in the model's layout: they only go back in as the tails' cache
    native = {i for _, _, gate in gated for i in gate.trunk_reads} - targets
    for _, _, gate in gated:
        targets.update([gate.score_layer, *gate.trunk_reads])
    out = model.run(x, sorted(targets), cache, native) if cache or native else \
        model.run(x, sorted(targets))
    runs = {name: HeadRun({y: out[y] for y in layers})
            for name, layers, gate in heads if gate is None}
    for name, layers, gate in gated:
        scores = out[gate.score_layer].reshape(len(x))
        images = torch.nonzero(scores >= gate.threshold).flatten()
        if len(images) == 0:
            runs[name] = HeadRun({}, [])
            continue
        every = len(images) == len(x)  # then no gather is needed
        reads = {i: out[i] if every else out[i][images] for i in gate.trunk_reads}
        tail = model.run(x if every else x[images], list(layers), reads)
        runs[name] = HeadRun(tail, images.tolist())
    return runs


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

    def run(self, x: torch.Tensor, heads: Sequence[str] | None = None,
            cache: dict[int, torch.Tensor] | None = None,
            gates: bool = True) -> dict[str, HeadRun]:
        """Like calling the model, but a gated head's tail runs only on the images its gate
        passes (``gates=False``: every tail on every image)."""
        names = list(heads) if heads is not None else self.head_names
        network = self.model.network
        plan = [(n, self.heads.group(n).yolo_layers,
                 gated_run(network, self.heads.group(n)) if gates else None) for n in names]
        return run_heads(self.model, x, plan, cache)

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
