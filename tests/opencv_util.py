"""OpenCV's Darknet importer as an independent reference for [yolo] outputs.

OpenCV (``cv2.dnn.readNetFromDarknet``) does not return a [yolo] layer's buffer the way
Darknet leaves it: it decodes the boxes itself. :func:`to_opencv_layout` converts our (and
Darknet's) [yolo] output into OpenCV's layout so the two can be compared number by number;
:func:`opencv_yolo_outputs` runs OpenCV on a cfg copy that switches off its thresholding and
NMS. Used by the core's conformance tests and by the merge tests.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np


def to_opencv_layout(yolo_output, yolo_spec, net_w: int, net_h: int,
                     thresh: float = 0.0) -> np.ndarray:
    """Our [yolo] output for one image, in the layout of OpenCV's ``yolo_<i>`` output.

    ``yolo_output`` is (C, H, W) or (1, C, H, W) (numpy or torch) as Darknet leaves it: per
    anchor ``a`` and field ``k`` the channel ``a·(5+classes)+k`` holds x, y already through
    the logistic and scale_x_y, w, h raw, objectness and class scores through the logistic
    (nothing activated with ``new_coords=1``). ``yolo_spec`` is the layer's
    :class:`~netsurgery.darknet.layers.YoloSpec` (anchors and mask); ``net_w``, ``net_h`` the network
    input size. With ``dn[a, k] = yolo_output[a·(5+classes)+k, y, x]`` OpenCV's output is a
    2-D array of shape (H·W·A, 5+classes)::

        row      = (y·W + x)·A + a
        col 0    = (x + dn[a,0]) / W                    box centre x, fraction of the image
        col 1    = (y + dn[a,1]) / H                    box centre y
        col 2    = exp(dn[a,2]) · anchor_w[mask[a]] / net_w   (new_coords: 4·dn² · anchor_w)
        col 3    = exp(dn[a,3]) · anchor_h[mask[a]] / net_h   (new_coords: 4·dn² · anchor_h)
        col 4    = dn[a,4]                              objectness
        col 5+j  = dn[a,4] · dn[a,5+j]                  class probability, set to 0 when it
                                                        is <= thresh (OpenCV's cfg thresh=)

    Computed in float64 and returned as float64.
    """
    out = yolo_output.detach().cpu().numpy() if hasattr(yolo_output, "detach") else \
        np.asarray(yolo_output)
    if out.ndim == 4:
        if out.shape[0] != 1:
            raise ValueError(f"to_opencv_layout: one image expected, got batch {out.shape[0]}")
        out = out[0]
    n_anchors = len(yolo_spec.mask)
    fields = yolo_spec.classes + 5
    c, h, w = out.shape
    if c != n_anchors * fields:
        raise ValueError(f"to_opencv_layout: {c} channels, expected {n_anchors}·{fields}")
    dn = out.astype(np.float64).reshape(n_anchors, fields, h, w)
    dn = dn.transpose(2, 3, 0, 1)  # (H, W, A, fields): OpenCV's row order
    anchors = np.asarray(yolo_spec.head_anchors, dtype=np.float64)  # (A, 2) in net pixels
    res = np.empty_like(dn)
    res[..., 0] = (np.arange(w)[None, :, None] + dn[..., 0]) / w
    res[..., 1] = (np.arange(h)[:, None, None] + dn[..., 1]) / h
    if yolo_spec.new_coords:
        res[..., 2] = 4.0 * dn[..., 2] ** 2 * anchors[:, 0] / net_w
        res[..., 3] = 4.0 * dn[..., 3] ** 2 * anchors[:, 1] / net_h
    else:
        res[..., 2] = np.exp(dn[..., 2]) * anchors[:, 0] / net_w
        res[..., 3] = np.exp(dn[..., 3]) * anchors[:, 1] / net_h
    res[..., 4] = dn[..., 4]
    prob = dn[..., 4:5] * dn[..., 5:]
    res[..., 5:] = np.where(prob > thresh, prob, 0.0)
    return res.reshape(h * w * n_anchors, fields)


def opencv_cfg_text(cfg_text: str) -> str:
    """The cfg with ``thresh=0`` and ``nms_threshold=0`` added to every [yolo] section, so
    that OpenCV returns every box unfiltered."""
    return re.sub(r"^\s*\[yolo\]\s*$", "[yolo]\nthresh=0\nnms_threshold=0", cfg_text,
                  flags=re.MULTILINE)


def opencv_yolo_outputs(cfg_path: str | os.PathLike, weights_path: str | os.PathLike,
                        blob: np.ndarray, workdir: str | os.PathLike) -> dict[int, np.ndarray]:
    """Run OpenCV's Darknet importer (plain OpenCV backend) on ``blob`` (1, C, H, W float32).
    Returns {darknet layer index: OpenCV ``yolo_<index>`` output}. ``cv2.error`` propagates
    (OpenCV refuses some layers and activations)."""
    import cv2

    text = Path(cfg_path).read_text()
    cv_cfg = Path(workdir) / "opencv.cfg"
    cv_cfg.write_text(opencv_cfg_text(text))
    net = cv2.dnn.readNetFromDarknet(str(cv_cfg), str(weights_path))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = [n for n in net.getUnconnectedOutLayersNames() if n.startswith("yolo_")]
    net.setInput(np.ascontiguousarray(blob, dtype=np.float32))
    outs = net.forward(names)
    return {int(n.split("_")[1]): np.asarray(o) for n, o in zip(names, outs)}
