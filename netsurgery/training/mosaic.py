"""Mosaic augmentation (``[net] mosaic=1``): four training images in the four quadrants of
one network input, as AlexeyAB's ``load_data_detection`` builds them.

For each sample (with probability 1/2; Darknet decides per loading thread's share of a batch):

* a cut point: cut_x uniform integer in [0.2·w, 0.8·w], cut_y likewise;
* four images, each prepared on its own exactly as without mosaic (jittered crop, flip,
  colour) at the full network size. With probability 1/2 per image the crop's jitter is
  moved to one side in each axis ("move each 2nd image to the corner, so that most of it is
  visible"): the crop then starts at the image edge that faces the outer corner of its
  quadrant;
* quadrant q takes the part of image q that faces the cut point: the top-left quadrant shows
  the bottom-right cut_x × cut_y pixels of image 0, and so on, shifted inwards past any grey
  border the jitter added on the far side (Darknet's left/right/top/bottom shifts);
* boxes are shifted the same way, clipped to the input (``mosaic_bound=1``: to their
  quadrant) and dropped when they leave it or get narrower than one pixel, as
  ``blend_truth_mosaic`` does.

Quadrant 0 holds the sample's scheduled image (so an epoch still shows every image in the
top-left quadrant at least), 1..3 images drawn at random from the whole training set.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .augment import AugmentConfig, Crop, plan_crop, render

MIN_OFFSET = 0.2  # Darknet keeps the cut point 20 % away from the borders


@dataclass(frozen=True)
class Quadrant:
    """Where one image's pixels come from and go to, in network pixels."""

    index: int  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    src_x: int  # left column of the part taken from the prepared image
    src_y: int
    dst_x: int
    dst_y: int
    width: int
    height: int


def quadrant(index: int, cut_x: int, cut_y: int, net_w: int, net_h: int,
             shifts: tuple[int, int, int, int]) -> Quadrant:
    """The copy rectangle of quadrant ``index`` for a cut at (cut_x, cut_y); ``shifts`` =
    (left, top, right, bottom) grey margins to skip in the prepared image."""
    left, top, right, bottom = shifts
    right_side, lower = index in (1, 3), index in (2, 3)
    width = net_w - cut_x if right_side else cut_x
    height = net_h - cut_y if lower else cut_y
    src_x = left if right_side else net_w - cut_x - right
    src_y = top if lower else net_h - cut_y - bottom
    return Quadrant(index, src_x, src_y, cut_x if right_side else 0, cut_y if lower else 0,
                    width, height)


def grey_shifts(crop: Crop, image_w: int, image_h: int, cut_x: int, cut_y: int, net_w: int,
                net_h: int) -> tuple[int, int, int, int]:
    """How far (network pixels) the crop reaches beyond each image edge, capped by the
    quadrant sizes: Darknet's left_shift, top_shift, right_shift, bot_shift."""
    pleft = int(round(crop.left))
    ptop = int(round(crop.top))
    pright = image_w - pleft - int(round(crop.width))
    pbot = image_h - ptop - int(round(crop.height))
    if crop.flip:
        pleft, pright = pright, pleft
    return (min(cut_x, max(0, -pleft * net_w // image_w)),
            min(cut_y, max(0, -ptop * net_h // image_h)),
            min(net_w - cut_x, max(0, -pright * net_w // image_w)),
            min(net_h - cut_y, max(0, -pbot * net_h // image_h)))


def shift_boxes(boxes: np.ndarray, q: Quadrant, net_w: int, net_h: int,
                bound: bool) -> np.ndarray:
    """Boxes (n, 5: class, cx, cy, w, h relative) of a prepared image moved with its
    quadrant, clipped and filtered like ``blend_truth_mosaic``."""
    if len(boxes) == 0:
        return boxes.reshape(0, 5).astype(np.float32)
    cls, x, y, w, h = (boxes[:, k].astype(np.float64) for k in range(5))
    x = x + (q.dst_x - q.src_x) / net_w
    y = y + (q.dst_y - q.src_y) / net_h
    # Darknet converts the edges to int pixels (truncation) before clipping
    left, right = np.trunc((x - w / 2) * net_w), np.trunc((x + w / 2) * net_w)
    top, bottom = np.trunc((y - h / 2) * net_h), np.trunc((y + h / 2) * net_h)
    if bound:  # mosaic_bound=1: clip to the quadrant
        left = np.maximum(left, q.dst_x)
        right = np.minimum(right, q.dst_x + q.width)
        top = np.maximum(top, q.dst_y)
        bottom = np.minimum(bottom, q.dst_y + q.height)
        x, w = (right + left) / 2 / net_w, (right - left) / net_w
        y, h = (bottom + top) / 2 / net_h, (bottom - top) / net_h
    else:  # clip to the whole input, moving the centre with the cut edge
        cut = np.minimum(left, 0) / net_w
        x, w = x - cut / 2, w + cut
        cut = np.maximum(right - net_w, 0) / net_w
        x, w = x - cut / 2, w - cut
        cut = np.minimum(top, 0) / net_h
        y, h = y - cut / 2, h + cut
        cut = np.maximum(bottom - net_h, 0) / net_h
        y, h = y - cut / 2, h - cut
        left, right = np.trunc((x - w / 2) * net_w), np.trunc((x + w / 2) * net_w)
        top, bottom = np.trunc((y - h / 2) * net_h), np.trunc((y + h / 2) * net_h)
    keep = ((left >= 0) & (right <= net_w) & (top >= 0) & (bottom <= net_h)
            & (w > 1 / net_w) & (w < 1) & (h > 1 / net_h) & (h < 1)
            & (x > 0) & (x < 1) & (y > 0) & (y < 1))
    return np.stack([cls, x, y, w, h], 1)[keep].astype(np.float32)


def _corner_crop(crop: Crop, index: int, image_w: int, image_h: int) -> Crop:
    """Move the crop's jitter so that it starts at the image edge on the quadrant's outer
    side (Darknet moves the whole left+right slack to one side, top+bottom to the other)."""
    pleft, ptop = crop.left, crop.top
    pright = image_w - crop.left - crop.width
    pbot = image_h - crop.top - crop.height
    outer_left = index in (0, 2)
    if crop.flip:
        outer_left = not outer_left  # the image is mirrored after the crop
    if outer_left:
        pright, pleft = pright + pleft, 0.0
    else:
        pleft, pright = pleft + pright, 0.0
    if index in (0, 1):
        pbot, ptop = pbot + ptop, 0.0
    else:
        ptop, pbot = ptop + pbot, 0.0
    return Crop(pleft, ptop, image_w - pleft - pright, image_h - ptop - pbot, crop.dest_x,
                crop.dest_y, crop.dest_w, crop.dest_h, crop.flip)


def mosaic(images: list[np.ndarray], labels: list[np.ndarray], net_w: int, net_h: int,
           cfg: AugmentConfig, rng: np.random.Generator,
           bound: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Four images (H, W, 3 uint8 or float RGB) and their boxes (n, 5 relative) → one network
    input (3, net_h, net_w) float32 and its boxes. ``bound`` = ``[net] mosaic_bound``."""
    if len(images) != 4 or len(labels) != 4:
        raise ValueError(f"mosaic needs 4 images and 4 label arrays, got {len(images)}, "
                         f"{len(labels)}")
    cut_x = int(rng.integers(int(net_w * MIN_OFFSET), int(net_w * (1 - MIN_OFFSET)) + 1))
    cut_y = int(rng.integers(int(net_h * MIN_OFFSET), int(net_h * (1 - MIN_OFFSET)) + 1))
    out = np.empty((net_h, net_w, 3), dtype=np.float32)
    boxes = []
    for index, (image, truth) in enumerate(zip(images, labels)):
        image_h, image_w = image.shape[:2]
        crop = plan_crop(image_w, image_h, net_w, net_h, cfg, rng)
        if rng.integers(0, 2) == 0:
            crop = _corner_crop(crop, index, image_w, image_h)
        prepared, moved = render(image, truth, crop, net_w, net_h, cfg, rng)
        q = quadrant(index, cut_x, cut_y, net_w, net_h,
                     grey_shifts(crop, image_w, image_h, cut_x, cut_y, net_w, net_h))
        out[q.dst_y:q.dst_y + q.height, q.dst_x:q.dst_x + q.width] = \
            prepared[q.src_y:q.src_y + q.height, q.src_x:q.src_x + q.width]
        boxes.append(shift_boxes(moved, q, net_w, net_h, bound))
    return np.ascontiguousarray(out.transpose(2, 0, 1)), np.concatenate(boxes)


__all__ = ["MIN_OFFSET", "Quadrant", "grey_shifts", "mosaic", "quadrant", "shift_boxes"]
