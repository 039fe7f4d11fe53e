"""Training-time image preparation: Darknet's detection augmentation (AlexeyAB's
``load_data_detection``; mosaic is :mod:`netsurgery.training.mosaic`), seeded through the ``rng``
the caller passes (:mod:`netsurgery.training.batches` makes one per sample).

One bilinear resampling does what Darknet does in three steps (crop with jitter, resize to the
network size, optional horizontal flip); colour is then shifted in HSV. Boxes follow the same
geometry (``fill_truth_detection``): moved, clipped to the image and dropped when they shrink
below one network pixel.

* ``jitter`` (read from the last ``[yolo]`` section, as Darknet does): each side of the crop
  moves by a random integer in [-jitter·size, +jitter·size] pixels, which translates and
  scales the image; the part of the crop outside the image is grey 0.5 (AlexeyAB uses the
  image's mean colour there).
* ``flip`` ([net], default 1): horizontal flip with probability 1/2.
* ``hue`` (shift in turns, uniform in [-hue, hue]), ``saturation`` and ``exposure``
  (factor uniform in [1, s], inverted with probability 1/2).
* ``letter_box`` ([net]): the crop keeps its proportions and is centred on a grey input, as
  ``letterbox_image`` places images at inference (AlexeyAB widens the crop to the network's
  aspect ratio instead, which gives the same picture up to rounding).

* ``random`` (multi-scale training, read from the last ``[yolo]`` section like jitter): see
  :class:`MultiScale`.

* ``mosaic``, ``mosaic_bound`` ([net]): see :mod:`netsurgery.training.mosaic`.
* ``mixup=1`` ([net], without mosaic): half of the samples are two prepared images blended
  half and half, with the boxes of both (:func:`blend`).

* ``resize`` (last ``[yolo]``, e.g. 1.5): the crop is also scaled, each side moving by a
  random part of [size·(1 − s)/2, size·(1 − 1/s)/2] (one draw for left and top, one for right
  and bottom, so the aspect ratio stays), i.e. the object scale changes by up to s either way.
* ``gaussian_noise`` ([net], σ in 0..255 levels): with probability 1/2 noise is added after the
  colour shift. Darknet draws it into an 8-bit image, which clips the negative half to zero,
  so the noise only brightens; netsurgery does the same.

* ``blur`` ([net]): per image one of three, equally likely: no blur; the background blurred
  (17×17 Gaussian) with the boxes kept sharp; or, for ``blur`` > 1, the whole image blurred
  with a (blur/2·2+1)² kernel, the level lowered to the smallest box side / 8 so that small
  objects stay visible (``blur=1``: the background again). See :func:`blur_image`.

Not implemented (reported by :func:`unsupported_options`): cutmix (Darknet refuses it for
detectors too) and angle. Without augmentation the image is only resized (or letterboxed)
like at inference, at the cfg's size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from netsurgery.darknet.cfg import Cfg
from netsurgery.detection.image import letterbox_geometry

GREY = 0.5  # Darknet's letterbox fill


@dataclass(frozen=True)
class AugmentConfig:
    """The augmentation settings of a cfg (Darknet's names and defaults)."""

    jitter: float = 0.2
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    flip: bool = True
    letter_box: bool = False
    mosaic: bool = False  # [net] mosaic=1: half of the samples are mosaics
    mixup: bool = False  # [net] mixup=1 (without mosaic): half of the samples blend two images
    resize: float = 1.0  # last [yolo] resize: random scale of the crop, up to this factor
    gaussian_noise: int = 0  # [net] gaussian_noise: σ of the (brightening) noise, 0..127
    blur: int = 0  # [net] blur: 1 background blur; > 1 also whole-image blur of that level
    mosaic_bound: bool = False  # [net] mosaic_bound=1: mosaic boxes clipped to their quadrant

    @classmethod
    def from_cfg(cls, cfg: Cfg) -> "AugmentConfig":
        net = cfg.net
        yolos = [s for s in cfg.layers if s.type == "yolo"]
        # Darknet's train_detector takes jitter (and resize) from the last detection layer
        jitter = yolos[-1].get_float("jitter", 0.2) if yolos else 0.2
        resize = yolos[-1].get_float("resize", 1.0) if yolos else 1.0
        if not resize > 0:
            raise yolos[-1].error(f"resize={resize}: expected a positive scale", "resize")
        return cls(jitter=jitter,
                   hue=net.get_float("hue", 0.0),
                   saturation=net.get_float("saturation", 1.0),
                   exposure=net.get_float("exposure", 1.0),
                   flip=bool(net.get_int("flip", 1)),
                   letter_box=bool(net.get_int("letter_box", 0)),
                   mosaic=bool(net.get_int("mosaic", 0)),
                   # Darknet: mosaic replaces mixup when both are set
                   mixup=net.get_int("mixup", 0) == 1 and not net.get_int("mosaic", 0),
                   resize=resize,
                   gaussian_noise=min(max(net.get_int("gaussian_noise", 0), 0), 127),
                   blur=max(net.get_int("blur", 0), 0),
                   mosaic_bound=bool(net.get_int("mosaic_bound", 0)))


@dataclass(frozen=True)
class MultiScale:
    """Darknet's multi-scale training (``random=1`` on the last ``[yolo]``): every 10
    iterations the network is resized to a random size around the cfg's, as AlexeyAB's
    train_detector does:

    * ``coef`` = ``random`` (1 means 1.4); r = a factor uniform in [1, coef], inverted with
      probability 1/2;
    * each side becomes round(r·size/step + 1)·step (``step`` = ``[net] resize_step``, 32),
      clamped to at least ``step``; a shrinking r (< 1) never gives more than the cfg's size;
    * the first 10 iterations and those after ``iterations − 100`` run at the largest size,
      round(coef·size/step + 1)·step (Darknet: "check memory" and "settle the BatchNorm
      statistics").

    A 416 cfg thus trains at 320..608 (448 when r = 1: Darknet's +1). The draw is seeded
    by (seed, iteration // 10), so a resumed or multi-process run sees the same sizes; the
    blocks count from iteration 0 rather than from the start of each run, and a resumed run
    does not begin with the largest size again. ``coef`` 0 = off."""

    width: int
    height: int
    coef: float = 0.0
    step: int = 32
    every: int = 10
    settle: int = 100  # the last iterations at the largest size

    @classmethod
    def from_cfg(cls, cfg: Cfg, width: int, height: int) -> "MultiScale":
        yolos = [s for s in cfg.layers if s.type == "yolo"]
        random = yolos[-1].get_float("random", 0.0) if yolos else 0.0
        step = cfg.net.get_int("resize_step", 32)
        if step < 1:
            raise cfg.net.error(f"resize_step={step}: expected a positive number of pixels",
                                "resize_step")
        if random < 0:
            raise yolos[-1].error(f"random={random}: expected 0 (off), 1 or a scale > 0",
                                  "random")
        coef = 1.4 if random == 1 else random
        return cls(width, height, coef, step)

    def _side(self, r: float, size: int) -> int:
        return int(math.floor(r * size / self.step + 1 + 0.5)) * self.step  # roundl, r > 0

    @property
    def largest(self) -> tuple[int, int]:
        return self._side(self.coef, self.width), self._side(self.coef, self.height)

    def size(self, iteration: int, iterations: int, seed: int) -> tuple[int, int]:
        """Input (width, height) for ``iteration`` (0-based) of a run of ``iterations``."""
        if not self.coef:
            return self.width, self.height
        block = iteration // self.every
        if block == 0 or block * self.every > iterations - self.settle:
            return self.largest
        r = _rand_scale(np.random.default_rng([seed, 4, block]), self.coef)
        w, h = self._side(r, self.width), self._side(r, self.height)
        if r < 1 and (w > self.width or h > self.height):
            w, h = self.width, self.height
        return max(w, self.step), max(h, self.step)


_UNSUPPORTED_NET = ("cutmix",)


def unsupported_options(cfg: Cfg) -> list[str]:
    """Augmentation options set in ``cfg`` that netsurgery's trainer ignores."""
    def where(section, key: str) -> str:
        opt = section.find(key)
        line = opt.line if opt is not None and opt.line is not None else section.line
        return f"{section.path or cfg.path}:{line}: [{section.header}] {key}"

    return [where(cfg.net, key) for key in (*_UNSUPPORTED_NET, "angle")
            if cfg.net.get_float(key, 0) != 0]


@dataclass(frozen=True)
class Crop:
    """Where the image goes: the source rectangle (pixels of the original image, may reach
    outside it) is resized onto the destination rectangle of the network input (the whole
    input when stretching; the centred letterbox part otherwise, the rest is grey)."""

    left: float
    top: float
    width: float
    height: float
    dest_x: int
    dest_y: int
    dest_w: int
    dest_h: int
    flip: bool = False


def plan_crop(image_w: int, image_h: int, net_w: int, net_h: int, cfg: AugmentConfig,
              rng: np.random.Generator | None) -> Crop:
    """Darknet's crop: each side jittered (``rng`` None = no jitter), then stretched onto
    the input or, with letter_box, letterboxed (aspect kept, centred, as letterbox_image
    places an image: without jitter the geometry is exactly Darknet's)."""
    pleft = ptop = pright = pbot = 0
    if rng is not None and cfg.jitter > 0:
        dw, dh = int(image_w * cfg.jitter), int(image_h * cfg.jitter)
        pleft, pright = (int(v) for v in rng.integers(-dw, dw + 1, size=2))
        ptop, pbot = (int(v) for v in rng.integers(-dh, dh + 1, size=2))
    if rng is not None and cfg.resize != 1:
        r1, r2 = rng.random(2)  # r1 for left and top, r2 for right and bottom: aspect kept
        (lo_w, hi_w), (lo_h, hi_h) = _resize_range(image_w, cfg.resize), \
            _resize_range(image_h, cfg.resize)
        pleft = int(pleft + lo_w + r1 * (hi_w - lo_w))  # C's int += float truncates
        pright = int(pright + lo_w + r2 * (hi_w - lo_w))
        ptop = int(ptop + lo_h + r1 * (hi_h - lo_h))
        pbot = int(pbot + lo_h + r2 * (hi_h - lo_h))
    width = max(image_w - pleft - pright, 1)
    height = max(image_h - ptop - pbot, 1)
    if cfg.letter_box:
        geo = letterbox_geometry(width, height, net_w, net_h)
        dest = (geo.dx, geo.dy, max(geo.new_w, 1), max(geo.new_h, 1))
    else:
        dest = (0, 0, net_w, net_h)
    flip = bool(rng is not None and cfg.flip and rng.integers(0, 2))
    return Crop(float(pleft), float(ptop), float(width), float(height), *dest, flip)


def _resize_range(size: int, scale: float) -> tuple[int, int]:
    """Darknet's bounds for moving one side of the crop with ``[yolo] resize=scale``: down to
    size·(1 − s)/2 (a larger crop: the object shrinks) and, for s > 1, up to size·(1 − 1/s)/2
    (computed in float32 and truncated, like Darknet's const int: 120 at 1.5 gives −30, 19)."""
    one, two, s = np.float32(1), np.float32(2), np.float32(scale)
    down = one / s if s > 1 else s
    up = s if s > 1 else one / s
    lo = int(np.float32(size) * (one - one / down) / two)
    return lo, (int(np.float32(size) * (one - one / up) / two) if s >= 1 else 0)


def _axis(n_in: int, n_out: int, start: float, step: float):
    """Source indices (into the image padded by one grey pixel per side) and weights for
    bilinear sampling at positions start + k·step, k = 0..n_out-1."""
    pos = start + step * np.arange(n_out, dtype=np.float64)
    pos = np.clip(pos, -1.0, float(n_in))  # beyond the pad everything is grey anyway
    lo = np.floor(pos)
    frac = (pos - lo).astype(np.float32)
    i0 = lo.astype(np.int64) + 1
    i1 = np.minimum(i0 + 1, n_in + 1)
    return i0, i1, frac


def _sampling(left: float, size: float, dest: int, dest_size: int) -> tuple[float, float]:
    """(start, step) in source pixels for output index 0.. of one axis: Darknet's
    resize_image aligns corners, step = (in-1)/(out-1)."""
    step = (size - 1) / (dest_size - 1) if dest_size > 1 else 0.0
    return left - dest * step, step


def warp(image: np.ndarray, crop: Crop, net_w: int, net_h: int) -> np.ndarray:
    """Crop + bilinear resize (+ flip) of an (H, W, 3) image (uint8, or float in [0, 1]) to
    float32 (net_h, net_w, 3).

    Sample positions follow Darknet's resize_image (corners aligned), so without jitter the
    result equals resize_image / letterbox_image to float rounding; outside the source
    rectangle's image part the value is grey 0.5. (OpenCV's warpAffine would quantise the
    positions to 1/32 pixel.)"""
    h, w = image.shape[:2]
    start_x, step_x = _sampling(crop.left, crop.width, crop.dest_x, crop.dest_w)
    start_y, step_y = _sampling(crop.top, crop.height, crop.dest_y, crop.dest_h)
    x0, x1, fx = _axis(w, net_w, start_x, step_x)
    y0, y1, fy = _axis(h, net_h, start_y, step_y)
    # Only the source rows the output samples are converted, padded and resampled (at most
    # 2·net_h of them): a large photo is not copied whole. Indices are into the image padded
    # by one grey pixel per side.
    needed, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    src = as_float(image[np.clip(needed - 1, 0, h - 1)])
    lines = np.empty((len(needed), w + 2, 3), dtype=src.dtype)
    lines[:, 1:-1] = src
    lines[:, 0] = lines[:, -1] = GREY
    lines[(needed == 0) | (needed == h + 1)] = GREY
    rows = lines[:, x0] * (1 - fx[None, :, None]) + lines[:, x1] * fx[None, :, None]
    r0, r1 = inverse[:net_h], inverse[net_h:]
    out = rows[r0] * (1 - fy[:, None, None]) + rows[r1] * fy[:, None, None]
    # the letterbox bars are grey whatever the crop holds there
    mask = np.zeros((net_h, net_w), dtype=bool)
    mask[crop.dest_y:crop.dest_y + crop.dest_h, crop.dest_x:crop.dest_x + crop.dest_w] = True
    out[~mask] = GREY
    if crop.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def move_boxes(boxes: np.ndarray, image_w: int, image_h: int, crop: Crop, net_w: int,
               net_h: int) -> np.ndarray:
    """Darknet's correct_boxes: ``boxes`` (n, 5) = class, cx, cy, w, h relative to the image;
    returns the boxes relative to the network input, clipped, tiny ones dropped."""
    if len(boxes) == 0:
        return boxes.reshape(0, 5).astype(np.float32)
    cls, cx, cy, w, h = (boxes[:, k].astype(np.float64) for k in range(5))

    def to_net(v, image_size, left, size, dest, dest_size, net_size):
        return (dest + (v * image_size - left) / size * dest_size) / net_size

    x_args = (image_w, crop.left, crop.width, crop.dest_x, crop.dest_w, net_w)
    y_args = (image_h, crop.top, crop.height, crop.dest_y, crop.dest_h, net_h)
    left, right = to_net(cx - w / 2, *x_args), to_net(cx + w / 2, *x_args)
    top, bottom = to_net(cy - h / 2, *y_args), to_net(cy + h / 2, *y_args)
    # clip to the visible image part (Darknet clips to [0, 1] of its crop)
    x_lo, x_hi = crop.dest_x / net_w, (crop.dest_x + crop.dest_w) / net_w
    y_lo, y_hi = crop.dest_y / net_h, (crop.dest_y + crop.dest_h) / net_h
    left, right = np.clip(left, x_lo, x_hi), np.clip(right, x_lo, x_hi)
    top, bottom = np.clip(top, y_lo, y_hi), np.clip(bottom, y_lo, y_hi)
    if crop.flip:  # the whole input is mirrored (see warp)
        left, right = 1 - right, 1 - left
    out = np.stack([cls, (left + right) / 2, (top + bottom) / 2, right - left, bottom - top], 1)
    # Darknet drops boxes narrower than one network pixel
    keep = (out[:, 3] >= 1.0 / net_w) & (out[:, 4] >= 1.0 / net_h)
    return out[keep].astype(np.float32)


def _rand_scale(rng: np.random.Generator, s: float) -> float:
    """Darknet's rand_scale: uniform between 1 and ``s``, inverted with probability 1/2."""
    scale = rng.uniform(min(1.0, s), max(1.0, s)) if s != 1 else 1.0
    return scale if rng.integers(0, 2) else 1.0 / scale


def shift_colours(image: np.ndarray, hue: float, saturation: float,
                  exposure: float) -> np.ndarray:
    """HSV shift of a float32 RGB (H, W, 3) image in [0, 1]: hue += hue·360°, S and V scaled,
    clipped to [0, 1]."""
    if hue == 0 and saturation == 1 and exposure == 1:
        return image
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    if hue:
        hsv[..., 0] = np.mod(hsv[..., 0] + hue * 360.0, 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] * exposure, 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def prepare(image: np.ndarray, boxes: np.ndarray, net_w: int, net_h: int, cfg: AugmentConfig,
            rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: ``image`` uint8 or float (H, W, 3) RGB, ``boxes`` (n, 5) class,
    cx, cy, w, h relative. ``rng`` None = no augmentation (resize/letterbox only).

    Returns the network input float32 (3, net_h, net_w) in [0, 1] and the boxes relative
    to it (n', 5)."""
    crop = plan_crop(image.shape[1], image.shape[0], net_w, net_h, cfg, rng)
    out, moved = render(image, boxes, crop, net_w, net_h, cfg, rng)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), moved


def blend(a: tuple[np.ndarray, np.ndarray],
          b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Darknet's mixup of two prepared samples (input, boxes): the inputs weighted 0.5 each,
    the boxes of both."""
    return (a[0] * np.float32(0.5) + b[0] * np.float32(0.5),
            np.concatenate([a[1], b[1]]).astype(np.float32))


def as_float(image: np.ndarray) -> np.ndarray:
    """uint8 images (the cache's form) as float32 in [0, 1]; float images as they are."""
    return image.astype(np.float32) * np.float32(1 / 255) if image.dtype == np.uint8 else image


def render(image: np.ndarray, boxes: np.ndarray, crop: Crop, net_w: int, net_h: int,
           cfg: AugmentConfig, rng: np.random.Generator | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """The image ((H, W, 3) uint8 or float) through ``crop`` with a random colour shift, blur
    and noise (none when ``rng`` is None): (net_h, net_w, 3) float32 and the boxes moved
    with it."""
    out = warp(image, crop, net_w, net_h)
    moved = move_boxes(np.asarray(boxes, dtype=np.float32).reshape(-1, 5), image.shape[1],
                       image.shape[0], crop, net_w, net_h)
    if rng is not None:
        hue = rng.uniform(-cfg.hue, cfg.hue) if cfg.hue > 0 else 0.0
        out = shift_colours(out, hue, _rand_scale(rng, cfg.saturation),
                            _rand_scale(rng, cfg.exposure))
        if cfg.blur:
            level = blur_level(int(rng.integers(0, 3)), cfg.blur, moved, net_w, net_h)
            out = blur_image(out, level, moved)
        if cfg.gaussian_noise and rng.integers(0, 2):
            # as cv::randn into an 8-bit image: rounded, negatives clipped to 0, then a
            # saturating add
            levels = np.clip(np.rint(rng.normal(0.0, cfg.gaussian_noise, out.shape)), 0, 255)
            out = np.minimum(out + (levels / 255).astype(np.float32), np.float32(1))
    return out, moved


def blur_level(choice: int, blur: int, boxes: np.ndarray, net_w: int, net_h: int) -> int:
    """Darknet's per-image blur level: ``choice`` 0 none, 1 background (level 1), 2 the cfg's
    ``blur``, lowered to the smallest box side (network pixels, truncated) // 8 when that is
    smaller — so without boxes there is no whole-image blur."""
    if choice == 0:
        return 0
    level = 1 if choice == 1 else blur
    if level > 1:
        sides = np.minimum(boxes[:, 3] * net_w, boxes[:, 4] * net_h)
        smallest = int(sides.min()) if len(sides) else 0
        level = min(level, smallest // 8)
    return level


def blur_image(image: np.ndarray, level: int, boxes: np.ndarray) -> np.ndarray:
    """``level`` 1: a 17×17 Gaussian blur outside the boxes (class, cx, cy, w, h relative),
    the boxes' pixels kept; > 1: the whole image blurred with a (level/2·2+1)² kernel; 0:
    unchanged (Darknet's image_data_augmentation)."""
    if level <= 0:
        return image
    if level > 1:
        k = level // 2 * 2 + 1
        return cv2.GaussianBlur(image, (k, k), 0)
    out = cv2.GaussianBlur(image, (17, 17), 0)
    h, w = image.shape[:2]
    for _, cx, cy, bw, bh in boxes.tolist():
        left, top = int((cx - bw / 2) * w), int((cy - bh / 2) * h)  # C's truncation
        right, bottom = left + int(bw * w), top + int(bh * h)
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = image[y0:y1, x0:x1]
    return out


__all__ = ["AugmentConfig", "Crop", "MultiScale", "as_float", "plan_crop",
           "render", "blend", "blur_image", "blur_level", "warp", "move_boxes",
           "shift_colours", "prepare", "unsupported_options"]
