"""Section types and option keys that AlexeyAB/darknet's cfg parser reads.

The tables below were compiled by reading ``src/parser.c`` of AlexeyAB/darknet
(``string_to_layer_type``, every ``parse_*`` function, ``parse_net_options`` and the
per-layer options read at the end of the loop in ``parse_network_cfg_custom``). They are a
description of that behaviour, written for netsurgery; no Darknet code is reproduced.

Facts worth knowing when using them:

* Darknet matches section names and keys with ``strcmp``: both are case-sensitive
  (``[Gaussian_yolo]``, ``B1``, ``workspace_size_limit_MB``). Before that, ``read_cfg``
  removes every blank (space, tab, CR, LF) anywhere in the line.
* Value kinds: ``"int"`` is read with ``atoi`` (so ``0.5`` reads as 0), ``"float"`` with
  ``atof``, ``"str"`` is a single word (activation name, policy, loss kind, file name),
  ``"ints"`` / ``"floats"`` are comma lists whose items go through ``atoi`` / ``atof``.
  ``[net] steps`` is ``"ints"`` (``atoi``), ``scales`` and ``seq_scales`` are ``"floats"``.
  Where Darknet reads a value with ``option_find_float*`` but stores it in an ``int``
  (``[convolutional] assisted_excitation``, ``[dropout] dropblock_size_abs``,
  ``[net] show_receptive_field``) the kind is ``"float"``: that is how the text is parsed.
* ``[scale_channels] from`` and ``[sam] from`` are a single index (``atoi`` of the value,
  anything after a comma is ignored), so their kind is ``"int"``; ``[shortcut] from`` and
  ``[route] layers`` are lists.
* The keys of :data:`COMMON_LAYER_KEYS` are read for every layer section (not for
  ``[net]``), after the layer's own keys; :data:`SECTION_KEYS` lists only the layer's own
  keys. :func:`value_kind` and :func:`known_keys` combine both.
* ``[net]`` keys that Darknet reads only in some cases are listed too: ``B1``/``B2``/``eps``
  (only with ``adam=1``), ``step``/``scale`` (``policy=step``), ``steps``/``scales``/
  ``seq_scales`` (``policy=steps`` or ``sgdr``), ``gamma`` (``exp``/``sigmoid``), ``step``
  (``sigmoid``). Darknet never warns about unused ``[net]`` keys; it does for layers.
* Sections Darknet does not know (for instance ``[deconvolutional]``, which AlexeyAB's
  ``string_to_layer_type`` does not map, or YOLOR's ``[implicit_add]``/``[implicit_mul]``;
  AlexeyAB has a single ``[implicit]``) are reported by Darknet as "Type not recognized";
  :func:`canonical_section` returns ``None`` for them.
"""
from __future__ import annotations

from typing import Literal

ValueKind = Literal["int", "float", "str", "ints", "floats"]

# alias as written between the brackets -> canonical section name
SECTION_ALIASES: dict[str, str] = {
    "net": "net",
    "network": "net",
    "convolutional": "convolutional",
    "conv": "convolutional",
    "local": "local",
    "activation": "activation",
    "rnn": "rnn",
    "gru": "gru",
    "lstm": "lstm",
    "conv_lstm": "conv_lstm",
    "history": "history",
    "crnn": "crnn",
    "connected": "connected",
    "conn": "connected",
    "crop": "crop",
    "cost": "cost",
    "region": "region",
    "yolo": "yolo",
    "Gaussian_yolo": "Gaussian_yolo",
    "detection": "detection",
    "softmax": "softmax",
    "soft": "softmax",
    "contrastive": "contrastive",
    "normalization": "normalization",
    "lrn": "normalization",
    "batchnorm": "batchnorm",
    "maxpool": "maxpool",
    "max": "maxpool",
    "local_avgpool": "local_avgpool",
    "local_avg": "local_avgpool",
    "reorg3d": "reorg3d",  # the current reorg layer (REORG)
    "reorg": "reorg",  # the old reorg layer (REORG_OLD)
    "avgpool": "avgpool",
    "avg": "avgpool",
    "route": "route",
    "upsample": "upsample",
    "shortcut": "shortcut",
    "scale_channels": "scale_channels",
    "sam": "sam",
    "dropout": "dropout",
    "empty": "empty",
    "silence": "empty",
    "implicit": "implicit",
}

# Keys shared by several recurrent / convolution-like layers.
_CONV_GEOMETRY: dict[str, ValueKind] = {
    "size": "int",
    "stride": "int",
    "dilation": "int",
    "pad": "int",
    "padding": "int",
}

# Options every [yolo]-like head reads in the same way.
_YOLO_COMMON: dict[str, ValueKind] = {
    "classes": "int",
    "num": "int",
    "mask": "ints",
    "max": "int",
    "max_delta": "float",
    "counters_per_class": "ints",
    "label_smooth_eps": "float",
    "scale_x_y": "float",
    "objectness_smooth": "int",
    "iou_normalizer": "float",
    "obj_normalizer": "float",
    "cls_normalizer": "float",
    "delta_normalizer": "float",
    "iou_loss": "str",  # mse | giou | diou | ciou | anything else = iou
    "iou_thresh_kind": "str",  # iou | giou | diou | ciou
    "beta_nms": "float",
    "nms_kind": "str",  # default | greedynms | diounms (| cornersnms for Gaussian_yolo)
    "jitter": "float",
    "resize": "float",
    "ignore_thresh": "float",
    "truth_thresh": "float",
    "iou_thresh": "float",
    "random": "float",
    "map": "str",  # file name
    "anchors": "floats",
}

SECTION_KEYS: dict[str, dict[str, ValueKind]] = {
    "net": {
        # batch and schedule
        "max_batches": "int",
        "batch": "int",
        "subdivisions": "int",
        "time_steps": "int",
        "learning_rate": "float",
        "learning_rate_min": "float",
        "sgdr_cycle": "int",
        "sgdr_mult": "int",
        "momentum": "float",
        "decay": "float",
        "policy": "str",  # random | poly | constant | step | exp | sigmoid | steps | sgdr
        "burn_in": "int",
        "power": "float",
        "step": "int",  # policy=step or sigmoid
        "scale": "float",  # policy=step
        "steps": "ints",  # policy=steps or sgdr (atoi of every item)
        "scales": "floats",  # policy=steps or sgdr
        "seq_scales": "floats",  # policy=steps or sgdr
        "gamma": "float",  # policy=exp or sigmoid
        # optimiser
        "adam": "int",
        "B1": "float",  # only with adam=1
        "B2": "float",  # only with adam=1
        "eps": "float",  # only with adam=1
        "loss_scale": "float",
        "ema_alpha": "float",
        "label_smooth_eps": "float",
        "adversarial_lr": "float",
        # input
        "height": "int",
        "width": "int",
        "channels": "int",
        "inputs": "int",
        # training and runtime behaviour
        "track": "int",
        "augment_speed": "int",
        "sequential_subdivisions": "int",
        "try_fix_nan": "int",
        "weights_reject_freq": "int",
        "equidistant_point": "int",
        "badlabels_rejection_percentage": "float",
        "num_sigmas_reject_badlabels": "float",
        "use_cuda_graph": "int",
        "dynamic_minibatch": "int",
        "optimized_memory": "int",
        "workspace_size_limit_MB": "float",
        "contrastive": "int",
        "contrastive_jit_flip": "int",
        "contrastive_color": "int",
        "unsupervised": "int",
        "attention": "int",
        "max_chart_loss": "float",
        "show_receptive_field": "float",  # read as float, used as a flag
        # data augmentation
        "max_crop": "int",
        "min_crop": "int",
        "flip": "int",
        "blur": "int",
        "gaussian_noise": "int",
        "mixup": "int",
        "cutmix": "int",
        "mosaic": "int",
        "mosaic_bound": "int",
        "letter_box": "int",
        "resize_step": "float",
        "angle": "float",
        "aspect": "float",
        "saturation": "float",
        "exposure": "float",
        "hue": "float",
    },
    "convolutional": {
        "filters": "int",
        "groups": "int",
        "size": "int",
        "stride": "int",
        "stride_x": "int",
        "stride_y": "int",
        "dilation": "int",
        "antialiasing": "int",
        "pad": "int",
        "padding": "int",
        "activation": "str",
        "assisted_excitation": "float",
        "share_index": "int",
        "batch_normalize": "int",
        "cbn": "int",
        "binary": "int",
        "xnor": "int",
        "bin_output": "int",
        "sway": "int",
        "rotate": "int",
        "stretch": "int",
        "stretch_sway": "int",
        "flipped": "int",
        "dot": "float",
        "angle": "float",
        "grad_centr": "int",
        "reverse": "float",
        "coordconv": "int",
        "stream": "int",
        "wait_stream": "int",
    },
    "local": {
        "filters": "int",
        "size": "int",
        "stride": "int",
        "pad": "int",
        "activation": "str",
    },
    "activation": {
        "activation": "str",
    },
    "rnn": {
        "output": "int",
        "hidden": "int",
        "activation": "str",
        "batch_normalize": "int",
        "logistic": "int",
        "shortcut": "int",
    },
    "gru": {
        "output": "int",
        "batch_normalize": "int",
    },
    "lstm": {
        "output": "int",
        "batch_normalize": "int",
    },
    "conv_lstm": {
        **_CONV_GEOMETRY,
        "output": "int",
        "groups": "int",
        "activation": "str",
        "batch_normalize": "int",
        "xnor": "int",
        "peephole": "int",
        "bottleneck": "int",
        "state_constrain": "int",
        "shortcut": "int",
        "lstm_activation": "str",
        "time_normalizer": "float",
    },
    "history": {
        "history_size": "int",
    },
    "crnn": {
        **_CONV_GEOMETRY,
        "output": "int",
        "hidden": "int",
        "groups": "int",
        "activation": "str",
        "batch_normalize": "int",
        "xnor": "int",
        "shortcut": "int",
    },
    "connected": {
        "output": "int",
        "activation": "str",
        "batch_normalize": "int",
    },
    "crop": {
        "crop_height": "int",
        "crop_width": "int",
        "flip": "int",
        "angle": "float",
        "saturation": "float",
        "exposure": "float",
        "noadjust": "int",
        "shift": "float",
    },
    "cost": {
        "type": "str",  # cost type name (sse, masked, smooth, L1, seg, wgan)
        "scale": "float",
        "ratio": "float",
    },
    "region": {
        "coords": "int",
        "classes": "int",
        "num": "int",
        "max": "int",
        "log": "int",
        "sqrt": "int",
        "softmax": "int",
        "focal_loss": "int",
        "jitter": "float",
        "resize": "float",
        "rescore": "int",
        "thresh": "float",
        "classfix": "int",
        "absolute": "int",
        "random": "float",
        "coord_scale": "float",
        "object_scale": "float",
        "noobject_scale": "float",
        "mask_scale": "float",
        "class_scale": "float",
        "bias_match": "int",
        "tree": "str",  # file name
        "map": "str",  # file name
        "anchors": "floats",
    },
    "yolo": {
        **_YOLO_COMMON,
        "show_details": "int",
        "new_coords": "int",
        "focal_loss": "int",
        "track_history_size": "int",
        # Darknet reads it with option_find_int_quiet (atoi: "0.7" is 0) although it is a
        # threshold with default 0.8; users write a fraction, so it is checked as a number.
        "sim_thresh": "float",
        "dets_for_track": "int",
        "dets_for_show": "int",
        "track_ciou_norm": "float",
        "embedding_layer": "int",
    },
    "Gaussian_yolo": {
        **_YOLO_COMMON,
        "uc_normalizer": "float",
        "yolo_point": "str",  # center | left_top | right_bottom
    },
    "detection": {
        "coords": "int",
        "classes": "int",
        "rescore": "int",
        "num": "int",
        "side": "int",
        "softmax": "int",
        "sqrt": "int",
        "max": "int",
        "coord_scale": "float",
        "forced": "int",
        "object_scale": "float",
        "noobject_scale": "float",
        "class_scale": "float",
        "jitter": "float",
        "resize": "float",
        "random": "float",
        "reorg": "int",
    },
    "softmax": {
        "groups": "int",
        "temperature": "float",
        "tree": "str",  # file name
        "spatial": "float",
        "noloss": "int",
    },
    "contrastive": {
        "classes": "int",
        "yolo_layer": "int",
        "temperature": "float",
        "cls_normalizer": "float",
        "max_delta": "float",
        "contrastive_neg_max": "int",
    },
    "normalization": {
        "alpha": "float",
        "beta": "float",
        "kappa": "float",
        "size": "int",
    },
    "batchnorm": {},
    "maxpool": {
        "stride": "int",
        "stride_x": "int",
        "stride_y": "int",
        "size": "int",
        "padding": "int",
        "maxpool_depth": "int",
        "out_channels": "int",
        "antialiasing": "int",
        "maxpool_zero_nonmax": "int",
    },
    "local_avgpool": {
        "stride": "int",
        "stride_x": "int",
        "stride_y": "int",
        "size": "int",
        "padding": "int",
    },
    "reorg3d": {
        "stride": "int",
        "reverse": "int",
    },
    "reorg": {
        "stride": "int",
        "reverse": "int",
    },
    "avgpool": {},
    "route": {
        "layers": "ints",
        "groups": "int",
        "group_id": "int",
        "stream": "int",
        "wait_stream": "int",
    },
    "upsample": {
        "stride": "int",
        "scale": "float",
    },
    "shortcut": {
        "from": "ints",
        "activation": "str",
        "weights_type": "str",  # none | per_feature (= per_layer) | per_channel
        "weights_normalization": "str",  # none | relu (= avg_relu) | softmax
    },
    "scale_channels": {
        "from": "int",
        "scale_wh": "int",
        "activation": "str",
    },
    "sam": {
        "from": "int",
        "activation": "str",
    },
    "dropout": {
        "probability": "float",
        "dropblock": "int",
        "dropblock_size_rel": "float",
        "dropblock_size_abs": "float",  # read as float, stored as int
    },
    "empty": {},
    "implicit": {
        "mean": "float",
        "std": "float",
        "filters": "int",
        "atoms": "int",
    },
}

# Read for every layer section (everything but [net]).
COMMON_LAYER_KEYS: dict[str, ValueKind] = {
    "clip": "float",
    "onlyforward": "int",
    "dont_update": "int",
    "burnin_update": "int",
    "stopbackward": "int",
    "train_only_bn": "int",
    "dontload": "int",
    "dontloadscales": "int",
    "learning_rate": "float",  # per-layer learning-rate scale
}

# Keys whose absence makes Darknet stop (error exit or a crash on a null pointer).
# Conditional requirements that cannot be written as a plain tuple:
#   [net]: either inputs= or all of height=, width=, channels= (else "No input parameters
#          supplied"); with policy=steps both steps= and scales=.
#   [contrastive]: yolo_layer= must point at a [yolo] layer (absent/0 dereferences NULL).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {name: () for name in SECTION_KEYS}
REQUIRED_KEYS.update(
    {
        "route": ("layers",),  # "Route Layer must specify input layers"
        "shortcut": ("from",),  # strlen() of a missing value
        "scale_channels": ("from",),  # atoi() of a missing value
        "sam": ("from",),  # atoi() of a missing value
        "contrastive": ("yolo_layer",),
    }
)

_BLANKS = " \t\r\n"


def canonical_section(name: str) -> str | None:
    """Canonical name of a section, given as written (``conv`` or ``[conv]``).

    Blanks are ignored as Darknet's line stripping does; the match is case-sensitive.
    Returns ``None`` for a section Darknet does not recognise.
    """
    text = "".join(ch for ch in name if ch not in _BLANKS)
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    return SECTION_ALIASES.get(text)


def known_keys(section: str) -> dict[str, ValueKind]:
    """Every key Darknet reads in ``section`` (any alias) with its kind; empty if unknown."""
    canon = canonical_section(section)
    if canon is None:
        return {}
    keys = dict(SECTION_KEYS[canon])
    if canon != "net":
        for key, kind in COMMON_LAYER_KEYS.items():
            keys.setdefault(key, kind)
    return keys


def value_kind(section: str, key: str) -> ValueKind | None:
    """Kind of ``key`` in ``section`` (any alias), or ``None`` if Darknet never reads it there."""
    canon = canonical_section(section)
    if canon is None:
        return None
    kind = SECTION_KEYS[canon].get(key)
    if kind is None and canon != "net":
        kind = COMMON_LAYER_KEYS.get(key)
    return kind
