"""Tails trained on cached trunk features: the engine of ``suggest-k``.

With the trunk 0..k frozen and the images not augmented, the outputs of layers 0..k are fixed
for each image. :class:`FeatureCache` therefore runs the base network once per training and
validation image and keeps the *frontier* outputs (the layers ≤ k that a layer > k reads) of
every candidate k at once; :class:`TailRun` then trains layers k+1.. of one candidate from
those tensors, as :func:`netsurgery.training.train.train` would (same initialisation from the
base weights, same seeded batch order, same SGD schedule and loss, BatchNorm of the tail in
training mode), but without running the trunk again, and measures Darknet's ``detector map``
mAP@0.5 on the cached validation features whenever asked.

A tail may compute in bfloat16 (``dtype="bfloat16"``: the layers under bfloat16 autocast;
the loss, the weights and the optimiser stay float32). On a CPU with bfloat16 in hardware
that trains 1.7–1.9 times faster per iteration and keeps the short runs' speed losses within
2.2 % of float32's (docs/suggest-k.md); elsewhere oneDNN emulates it and float32 is faster.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from netsurgery.analysis.cost import frontier
from netsurgery.darknet.cfg import load_cfg
from netsurgery.darknet.memory import GIB, available_memory
from netsurgery.darknet.model import DarknetModel
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import WeightsFile, load_weights
from netsurgery.detection.decode import Box
from netsurgery.detection.detect import detect_batch, heads_of
from netsurgery.detection.evaluate import (
    EvalResult,
    GroundTruth,
    ScoredDetection,
    evaluate_detections,
    scored_detections,
)
from netsurgery.detection.image import preprocess
from netsurgery.errors import UsageError
from netsurgery.training.augment import AugmentConfig

# the trainer's building blocks: a tail here starts, batches and steps as train() does
from netsurgery.training.base_weights import init_from_base
from netsurgery.training.batches import TrainImages
from netsurgery.training.config import default_batch
from netsurgery.training.data import Dataset, load_data_file, load_dataset, load_names
from netsurgery.training.freezing import param_groups
from netsurgery.training.loss import DetectionLoss
from netsurgery.training.schedule import Schedule

EVAL_THRESH, EVAL_NMS = 0.005, 0.45  # darknet detector map
DTYPES = ("float32", "bfloat16")


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch >= 2.1
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(name: str) -> str:
    """``auto`` -> ``bfloat16`` where the CPU has it in hardware, else ``float32``; a name of
    :data:`DTYPES` stays itself."""
    if name == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    if name not in DTYPES:
        raise UsageError(f"--dtype {name}: expected auto, {' or '.join(DTYPES)}")
    return name


@dataclass
class TaskSetup:
    """What every candidate shares: the task network, the base weights, the data."""

    network: Network
    base_net: Network
    base_weights: WeightsFile
    data_path: Path
    n_classes: int
    class_names: list[str]
    batch: int
    schedule: Schedule
    seed: int


def load_task(cfg: str | Path, weights: str | Path, base_cfg: str | Path, data: str | Path,
              batch: int | None = None, lr: float | None = None, seed: int = 0) -> TaskSetup:
    """Read the task cfg, the base weights (against ``base_cfg``) and the .data file's
    classes; batch and learning rate as :func:`~netsurgery.training.train.train` takes them."""
    task_cfg = load_cfg(cfg)
    network = build_network(task_cfg)
    base_net = build_network(load_cfg(base_cfg))
    data_file = load_data_file(data)
    n_classes = data_file.require_classes()
    loss = DetectionLoss(network)
    for head in loss.heads:
        if head.classes != n_classes:
            raise UsageError(f"{data_file.where('classes')}: classes = {n_classes}, but "
                             f"{cfg} [yolo] layer {head.layer} has classes={head.classes}")
    names = load_names(data_file.names) if data_file.names else [str(c) for c in
                                                                 range(n_classes)]
    return TaskSetup(network, base_net, load_weights(weights, base_net.layers), Path(data),
                     n_classes, names, batch or default_batch(task_cfg.net),
                     Schedule.from_cfg(task_cfg.net, lr), seed)


def base_initialised(task: TaskSetup) -> DarknetModel:
    """The task model as :func:`train` starts it: base arrays where they fit, fresh
    (seeded) elsewhere."""
    model = DarknetModel(task.network)
    init_from_base(model, task.base_weights, task.base_net, task.seed)
    return model


def load_lists(data: str | Path) -> tuple[Dataset, Dataset]:
    """The training and validation sets of a .data file; the validation list must hold
    images (suggest-k measures mAP on them)."""
    data_file = load_data_file(data)
    n_classes = data_file.require_classes()
    train_set = load_dataset(data_file.require("train"), n_classes)
    valid_set = load_dataset(data_file.require("valid"), n_classes)
    if not len(valid_set):
        raise UsageError(f"{data_file.where('valid')}: the validation list has no usable "
                         "images; suggest-k measures mAP on them")
    return train_set, valid_set


@dataclass
class FeatureCache:
    """Frontier outputs of the frozen trunk for every training and validation image."""

    layers: tuple[int, ...]
    train: dict[int, torch.Tensor]  # layer -> (n_train, C, H, W)
    valid: dict[int, torch.Tensor]  # layer -> (n_valid, C, H, W)
    train_truths: list[torch.Tensor]  # per image (n, 5): class, cx, cy, w, h (net-relative)
    images: TrainImages  # the seeded batch order
    valid_truths: list[GroundTruth]
    valid_ids: list[str]
    valid_sizes: list[tuple[int, int]]
    seconds: float

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for part in (self.train, self.valid) for t in part.values())


def frontier_layers(network: Network, ks: Sequence[int]) -> tuple[int, ...]:
    """Every layer a candidate's tail reads from its frozen trunk."""
    return tuple(sorted({j for k in ks for j in frontier(network, k)}))


def check_cache_fits(network: Network, ks: Sequence[int], n_train: int, n_valid: int,
                     limit: int | None = None) -> int:
    """Bytes the feature cache holds at its peak (the prepared images and the frontier
    outputs, float32); refused when that is more than ``limit`` (default: the memory
    available now) — the smallest k read the largest layers."""
    shape = network.net.shape
    per_layer = {j: 4 * network.layers[j].out_shape.c * network.layers[j].out_shape.h
                 * network.layers[j].out_shape.w for j in frontier_layers(network, ks)}
    per_image = 4 * shape.c * shape.h * shape.w + sum(per_layer.values())
    need = (n_train + n_valid) * per_image
    limit = available_memory() if limit is None else limit
    if limit and need > limit:
        mib = ", ".join(f"{j}: {size / 2**20:.1f}" for j, size in per_layer.items())
        raise UsageError(
            f"suggest-k: the trunk features of {n_train} training + {n_valid} validation "
            f"images need about {need / GIB:.1f} GiB ({per_image / 2**20:.1f} MiB per image; "
            f"MiB per image by frontier layer {mib}), more than the {limit / GIB:.1f} GiB "
            f"of memory available; leave out the smallest candidates or use fewer images")
    return need


def _run_trunk(model: DarknetModel, inputs: Sequence[np.ndarray], layers: Sequence[int],
               batch: int, progress: Callable[[int], None]) -> dict[int, torch.Tensor]:
    out_of: dict[int, torch.Tensor] = {}  # filled in place: no second copy at the end
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            x = torch.from_numpy(np.stack(inputs[start:start + batch]))
            out = model.run(x, list(layers))
            for j in layers:
                if j not in out_of:  # in the model's memory format (channels-last or not)
                    last = out[j].dim() == 4 and out[j].is_contiguous(
                        memory_format=torch.channels_last)
                    out_of[j] = torch.empty(
                        (len(inputs), *out[j].shape[1:]), dtype=out[j].dtype,
                        memory_format=torch.channels_last if last else torch.contiguous_format)
                out_of[j][start:start + len(x)] = out[j]
            progress(min(start + batch, len(inputs)))
    return out_of


def cache_features(task: TaskSetup, ks: Sequence[int], batch: int = 16,
                   log: Callable[[str], None] = lambda m: None) -> FeatureCache:
    """Run layers 0..max(ks) once per image (training list as the trainer prepares it without
    augmentation, validation list as ``detector map`` does) and keep the frontier outputs."""
    t0 = time.perf_counter()
    net = task.network.net
    cfg = task.network.cfg
    train_set, valid_set = load_lists(task.data_path)
    check_cache_fits(task.network, ks, len(train_set.items), len(valid_set.items))
    images = TrainImages(train_set, net.width, net.height, AugmentConfig.from_cfg(cfg),
                         augment=False, seed=task.seed)
    train_inputs, train_truths = [], []
    for index in range(len(images)):
        x, boxes = images.sample(0, 0, index)
        train_inputs.append(x)
        train_truths.append(torch.from_numpy(boxes))
    letterbox = bool(cfg.net.get_int("letter_box", 0))
    valid_inputs, sizes, ids, truths = [], [], [], []
    for sample in valid_set.items:
        x, size = preprocess(sample.image, net.width, net.height, letterbox)
        valid_inputs.append(x)
        sizes.append(size)
        ids.append(str(sample.image))
        truths += [GroundTruth(ids[-1], lab.class_id, Box(lab.cx, lab.cy, lab.w, lab.h))
                   for lab in sample.labels]
    layers = frontier_layers(task.network, ks)
    model = base_initialised(task).inference(fast=False)
    total = len(train_inputs) + len(valid_inputs)

    def progress(done: int, offset: int = 0) -> None:
        if (done + offset) % (batch * 10) < batch or done + offset == total:
            log(f"trunk features: {done + offset}/{total} images")

    train = _run_trunk(model, train_inputs, layers, batch, progress)
    valid = _run_trunk(model, valid_inputs, layers, batch,
                       lambda d: progress(d, len(train_inputs)))
    return FeatureCache(layers, train, valid, train_truths, images, truths, ids, sizes,
                        time.perf_counter() - t0)


class _CachedInputs:
    """Stands in for the model in :func:`detect_batch`: the "images" it is given are row
    numbers of the cached validation features, and ``run`` feeds those rows to the tail."""

    def __init__(self, model: DarknetModel, features: dict[int, torch.Tensor]):
        self.model, self.features, self.network = model, features, model.network

    def run(self, rows: torch.Tensor, targets: Sequence[int]) -> dict[int, torch.Tensor]:
        index = rows.reshape(-1).long()
        out = self.model.run(_placeholder(self.network, len(index)), targets,
                             {j: t[index] for j, t in self.features.items()})
        return {j: t.float() for j, t in out.items()}  # (bfloat16 under autocast)


def _placeholder(network: Network, n: int) -> torch.Tensor:
    """An input of the right shape that is never read (the cache covers the trunk)."""
    shape = network.net.shape
    return torch.zeros(1, shape.c, shape.h, shape.w).expand(n, -1, -1, -1)


class TailRun:
    """Layers k+1.. of the task network trained on cached trunk features, computing in
    ``dtype`` (one of :data:`DTYPES`)."""

    def __init__(self, task: TaskSetup, cache: FeatureCache, k: int, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
        self.task, self.cache, self.k, self.dtype = task, cache, k, dtype
        self.loss_fn = DetectionLoss(task.network)
        self.front = frontier(task.network, k)
        if not 0 <= k < min(self.loss_fn.inputs):
            raise ValueError(f"k={k}: expected 0 <= k < {min(self.loss_fn.inputs)} (the conv "
                             "before a [yolo] layer must stay trainable)")
        missing = [j for j in self.front if j not in cache.train]
        if missing:
            raise ValueError(f"k={k}: layers {missing} are not in the feature cache")
        model = base_initialised(task)
        model.unfold_batchnorm()
        needed = set(model.plan(self.loss_fn.inputs, self.front).order)
        for i, module in enumerate(model.layers):
            module.requires_grad_(i > k and i in needed)
        trainable = [i for i in range(k + 1, len(model.layers)) if i in needed]
        self.optimizer = torch.optim.SGD(
            param_groups(model, trainable, task.schedule.decay),
            lr=task.schedule.rate(0), momentum=task.schedule.momentum)
        self.model, self.iteration, self.seconds = model, 0, 0.0
        self.losses: list[float] = []

    def _compute(self) -> torch.autocast:
        """The network's arithmetic: float32, or bfloat16 autocast."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")

    def train(self, iterations: int) -> None:
        """Continue training until ``iterations`` updates in total."""
        t0 = time.perf_counter()
        task, model = self.task, self.model
        model.train()
        size = (task.network.net.width, task.network.net.height)
        while self.iteration < iterations:
            rate = task.schedule.rate(self.iteration)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            rows = self.cache.images.indices(self.iteration, task.batch)
            index = torch.tensor(rows)
            with self._compute():
                out = model.run(_placeholder(task.network, len(rows)), self.loss_fn.inputs,
                                {j: self.cache.train[j][index] for j in self.front})
            truths = [self.cache.train_truths[r] for r in rows]
            # the loss in float32: in bfloat16 it drifts (20.8 against 14.9 after 23 steps)
            result = self.loss_fn([out[t].float() for t in self.loss_fn.inputs], truths, size)
            (result.total / task.batch).backward()  # Darknet: summed deltas / batch
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.losses.append(float(result.total.detach()) / task.batch)
            self.iteration += 1
        self.seconds += time.perf_counter() - t0

    def evaluate(self, batch: int = 32) -> EvalResult:
        """Darknet's ``detector map`` on the cached validation features (the model's modes
        are restored afterwards)."""
        t0 = time.perf_counter()
        model, cache = self.model, self.cache
        was_training = model.training
        model.eval()
        stand_in = _CachedInputs(model, {j: cache.valid[j] for j in self.front})
        heads = heads_of(model)
        heads[0].class_names = self.task.class_names  # (HeadInfo is a dataclass)
        detections: list[ScoredDetection] = []
        n = len(cache.valid_ids)
        for start in range(0, n, batch):
            rows = np.arange(start, min(start + batch, n), dtype=np.float32)
            with self._compute():
                results = detect_batch(stand_in, rows.reshape(-1, 1, 1, 1),
                                       cache.valid_sizes[start:start + len(rows)], heads,
                                       EVAL_THRESH, EVAL_NMS,
                                       bool(model.network.cfg.net.get_int("letter_box", 0)))
            for image_id, per_head in zip(cache.valid_ids[start:], results):
                detections.extend(scored_detections(image_id, per_head[heads[0].name]))
        result = evaluate_detections(cache.valid_truths, detections, self.task.n_classes,
                                     names=self.task.class_names[:self.task.n_classes],
                                     coco=False)
        model.train(was_training)
        self.seconds += time.perf_counter() - t0
        return result
