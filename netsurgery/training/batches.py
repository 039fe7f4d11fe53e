"""The training set as seeded batches: which images make iteration ``i``'s batch, and each
sample's augmentation (:mod:`netsurgery.training.augment`; with ``[net] mosaic=1`` half of the samples
are a :mod:`netsurgery.training.mosaic`, with ``mixup=1`` half blend two images). Every random choice
is drawn from generators seeded by (seed, iteration, slot), so any iteration's batch is known
without replaying the earlier ones: a resumed or multi-process run sees the data of one
uninterrupted run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from netsurgery.detection.image import load_image
from netsurgery.errors import DataError

from .augment import AugmentConfig, blend, prepare
from .data import Dataset
from .mosaic import mosaic

CACHE_BYTES = 1 << 30  # decoded training images kept in memory (uint8)


class TrainImages:
    """The training images and labels, and the seeded batch order and augmentation."""

    def __init__(self, dataset: Dataset, net_w: int, net_h: int, aug: AugmentConfig,
                 augment: bool, seed: int, cache_bytes: int = CACHE_BYTES,
                 strict: bool = False):
        self.net_w, self.net_h = net_w, net_h
        self.aug, self.augment, self.seed = aug, augment, seed
        self._cache: dict[int, np.ndarray] = {}
        self._cache_left = cache_bytes
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, permutation)
        self.paths: list[Path] = []
        self.unreadable: list[str] = []  # why each skipped image could not be decoded
        items = []
        # decode every image before the first batch (into the cache while it lasts), so an
        # image that cannot be decoded is skipped and counted here, not found mid-run
        for item in dataset.items:
            try:
                self._remember(len(self.paths), _decode(item.image))
            except DataError as exc:
                if strict:
                    raise
                self.unreadable.append(str(exc))
                continue
            self.paths.append(item.image)
            items.append(item)
        if not items:
            raise DataError(f"{dataset.list_path}: no usable training images")
        self.labels = [np.array([[l.class_id, l.cx, l.cy, l.w, l.h] for l in item.labels],
                                dtype=np.float32).reshape(-1, 5) for item in items]

    def __len__(self) -> int:
        return len(self.paths)

    def indices(self, iteration: int, batch: int) -> list[int]:
        """Image indices of a batch: epochs of seeded permutations, so any iteration's batch
        is known without replaying the earlier ones."""
        n = len(self.paths)
        out = []
        for pos in range(iteration * batch, (iteration + 1) * batch):
            epoch, k = divmod(pos, n)
            out.append(int(self._permutation(epoch)[k]))
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            order = np.random.default_rng([self.seed, 2, epoch]).permutation(len(self.paths))
            self._perm = (epoch, order)
        return self._perm[1]

    def image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB, kept in memory while the cache budget lasts."""
        im = self._cache.get(index)
        if im is None:
            im = _decode(self.paths[index])
            self._remember(index, im)
        return im

    def _remember(self, index: int, im: np.ndarray) -> None:
        if im.nbytes <= self._cache_left:
            self._cache[index] = im
            self._cache_left -= im.nbytes

    def sample(self, iteration: int, slot: int, index: int,
               size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One sample at the network size, or at ``size`` = (width, height)."""
        w, h = size or (self.net_w, self.net_h)
        if not self.augment:
            return prepare(self.image(index), self.labels[index], w, h, self.aug, None)
        rng = np.random.default_rng([self.seed, 3, iteration, slot])
        if self.aug.mosaic or self.aug.mixup:
            pick = np.random.default_rng([self.seed, 5, iteration, slot])
            if pick.integers(0, 2):  # Darknet: half of the time
                others = [int(i) for i in pick.integers(0, len(self.paths),
                                                        size=3 if self.aug.mosaic else 1)]
                more = np.random.default_rng([self.seed, 6, iteration, slot])
                if self.aug.mixup:
                    other = others[0]
                    return blend(prepare(self.image(index), self.labels[index], w, h,
                                         self.aug, rng),
                                 prepare(self.image(other), self.labels[other], w, h,
                                         self.aug, more))
                chosen = [index, *others]
                return mosaic([self.image(i) for i in chosen], [self.labels[i] for i in chosen],
                              w, h, self.aug, more, self.aug.mosaic_bound)
        return prepare(self.image(index), self.labels[index], w, h, self.aug, rng)

    def batch(self, iteration: int, batch: int, slots: range, device,
              size: tuple[int, int] | None = None
              ) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        """Inputs (len(slots), 3, H, W), truths and image indices for the given slots of a
        global batch; ``size`` = (width, height) overrides the network size."""
        order = self.indices(iteration, batch)
        xs, truths = [], []
        for slot in slots:
            x, boxes = self.sample(iteration, slot, order[slot], size)
            xs.append(torch.from_numpy(x))
            truths.append(torch.from_numpy(boxes).to(device))
        return torch.stack(xs).to(device), truths, [order[slot] for slot in slots]


__all__ = ["CACHE_BYTES", "TrainImages"]


def _decode(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB as Darknet reads it (DataError when it cannot be decoded)."""
    chw = load_image(path)
    return np.ascontiguousarray(np.rint(chw.transpose(1, 2, 0) * 255).astype(np.uint8))
