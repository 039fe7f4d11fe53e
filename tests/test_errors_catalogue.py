"""Every error documented in docs/errors.md is produced here from a small input and its text
is matched against the documented pattern; every producer here has a documented entry. Also
the CLI's error policy: user errors exit 2 with one or two lines, internal errors exit 1 with a
hint, ``--debug`` shows the traceback."""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from netsurgery import errors as errors_module
from netsurgery.analysis.plots import check_arrays
from netsurgery.analysis.suggest import check_candidates, load_sweep_maps, suggest_k
from netsurgery.analysis.tails import check_cache_fits, load_lists, load_task
from netsurgery.cli.app import run
from netsurgery.cli.eval import _data_by_head
from netsurgery.darknet.cfg import load_cfg, parse_cfg_text
from netsurgery.darknet.memory import check_fits
from netsurgery.darknet.model import load_model
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import (
    WeightsHeader,
    file_layout,
    load_weights,
    load_weights_bytes,
    random_arrays,
    save_weights,
)
from netsurgery.detection.detect import check_detector_weights, heads_of, read_names
from netsurgery.detection.evaluate import evaluate_model
from netsurgery.detection.image import load_image
from netsurgery.errors import NetsurgeryError
from netsurgery.fileio import atomic_write_text, check_output, check_outputs, read_input_bytes
from netsurgery.surgery.gates import Gate, calibrate_threshold, check_gate_target
from netsurgery.surgery.heads import check_heads, load_heads, parse_heads
from netsurgery.surgery.merge import TaskInput, merge, merge_files, parse_task_option, split
from netsurgery.surgery.weighted import load_weighted
from netsurgery.training.anchors import task_cfg_for_dataset
from netsurgery.training.data import load_data_file, load_dataset, load_names, read_labels

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


# =============================================================================================
# The catalogue
# =============================================================================================
@dataclass
class Entry:
    id: str
    pattern: str  # the message with <placeholders>
    type: str  # the exception class name

    def regex(self) -> re.Pattern:
        """Literal text, each ``<placeholder>`` matching any text (an empty value too)."""
        parts = re.split(r"<[^<>\s][^<>]*>", self.pattern)
        return re.compile(".*?".join(re.escape(p) for p in parts), re.DOTALL)


def read_catalogue(path: Path = DOC) -> dict[str, Entry]:
    """``### E-...`` headings, each followed by its message pattern as the first code span
    and a ``**Type:** `Name``` line."""
    text = path.read_text(encoding="utf-8")
    entries: dict[str, Entry] = {}
    chunks = re.split(r"^### (E-[A-Z0-9-]+)[ \t]*$", text, flags=re.MULTILINE)
    for ident, body in zip(chunks[1::2], chunks[2::2]):
        assert ident not in entries, f"{ident} documented twice"
        pattern = re.search(r"^`([^`]+)`[ \t]*$", body, re.MULTILINE)
        kind = re.search(r"\*\*Type:\*\* `(\w+)`", body)
        assert pattern and kind, f"{ident}: needs a `pattern` line and a **Type:** line"
        entries[ident] = Entry(ident, pattern.group(1), kind.group(1))
    return entries


# =============================================================================================
# Producers: ID -> functions that raise that error
# =============================================================================================
PRODUCERS: dict[str, list[Callable[[Path], object]]] = {}


def produces(ident: str):
    def deco(fn):
        PRODUCERS.setdefault(ident, []).append(fn)
        return fn
    return deco


NET = "[net]\nwidth=16\nheight=16\nchannels=3\n"


def build(text: str, path: str = "bad.cfg", strict: bool = False):
    return build_network(parse_cfg_text(text, path, strict))


def strict(text: str, path: str = "bad.cfg"):
    """What Darknet accepts (a warning by default) is an error with strict=True."""
    return build(text, path, strict=True)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# -- cfg: reading ----------------------------------------------------------------------------
produces("E-CFG-FILE-NOT-FOUND")(lambda tmp: load_cfg(tmp / "missing.cfg"))
produces("E-CFG-FOLDER")(lambda tmp: load_cfg(tmp))
produces("E-CFG-UNREADABLE")(lambda tmp: load_cfg(write(tmp / "plain", "x") / "a.cfg"))
produces("E-CFG-NOT-UTF8")(lambda tmp: load_cfg(write(tmp / "l.cfg", b"[net]\nw=caf\xe9\n")))
produces("E-CFG-NUL")(lambda tmp: load_cfg(write(tmp / "n.cfg", b"[net]\nwidth=8\x00\n")))
produces("E-CFG-MALFORMED-HEADER")(lambda tmp: build("[net\nwidth=8\n"))
produces("E-CFG-MALFORMED-HEADER")(lambda tmp: build(NET + "[]\n"))
produces("E-CFG-UNKNOWN-SECTION")(lambda tmp: build(NET + "[deconvolutional]\n"))
produces("E-CFG-UNKNOWN-SECTION")(lambda tmp: build(NET + "[Convolutional]\n"))
produces("E-CFG-BEFORE-FIRST-SECTION")(lambda tmp: build("width=8\n" + NET))
produces("E-CFG-NOT-KEY-VALUE")(lambda tmp: build(NET + "[convolutional]\nfilters 16\n"))
produces("E-CFG-EMPTY-KEY")(lambda tmp: build(NET + "[convolutional]\n=16\n"))
produces("E-CFG-UNKNOWN-KEY")(lambda tmp: strict(NET + "[convolutional]\nfilter=16\n"))
produces("E-CFG-UNKNOWN-KEY")(lambda tmp: strict(NET + "[maxpool]\nfilters=16\n"))
produces("E-CFG-UNKNOWN-KEY")(lambda tmp: strict(NET + "[convolutional]\nsiez=3\n"))
produces("E-CFG-UNKNOWN-KEY")(lambda tmp: load_cfg(write(tmp / "s.cfg", NET + "seen=0\n"),
                                                   strict=True))
produces("E-CFG-DUPLICATE-KEY")(lambda tmp: strict(NET + "[convolutional]\nsize=1\nsize=3\n"))
produces("E-CFG-INLINE-COMMENT")(lambda tmp: strict(NET + "[convolutional]\nactivation=leaky #\n"))
produces("E-CFG-NO-SECTIONS")(lambda tmp: build("# nothing\n\n"))
produces("E-CFG-FIRST-NOT-NET")(lambda tmp: build("[convolutional]\nfilters=2\n"))
produces("E-CFG-SECOND-NET")(lambda tmp: build(NET + "[convolutional]\n" + NET))
produces("E-CFG-NOT-INTEGER")(lambda tmp: build(NET + "[convolutional]\nfilters=16x\n"))
produces("E-CFG-NOT-INTEGER")(lambda tmp: build(NET + "[convolutional]\nsize=1.5\n"))
produces("E-CFG-NOT-INTEGER")(lambda tmp: build(NET + "[convolutional]\nfilters=١٦\n"))
produces("E-CFG-INT-RANGE")(lambda tmp: build(NET + "[convolutional]\nfilters=4294967296\n"))
produces("E-CFG-NOT-NUMBER")(lambda tmp: build(NET + "[yolo]\nignore_thresh=.7.\n"))
produces("E-CFG-NOT-FINITE")(lambda tmp: build(NET + "[yolo]\nscale_x_y=nan\n"))
produces("E-CFG-NOT-FINITE")(lambda tmp: build(NET + "[yolo]\nscale_x_y=1e999\n"))
produces("E-CFG-BAD-LIST")(lambda tmp: build(NET + "[route]\nlayers=-1,,-3\n"))
produces("E-CFG-BAD-LIST")(lambda tmp: build(NET + "[route]\nlayers=\n"))

# -- cfg: layers -----------------------------------------------------------------------------
produces("E-CFG-MISSING-KEY")(lambda tmp: build(NET + "[convolutional]\n[route]\n"))
produces("E-CFG-MISSING-KEY")(lambda tmp: build(NET + "[conv]\n[shortcut]\nactivation=linear\n"))
produces("E-CFG-NO-LAYERS")(lambda tmp: build(NET))
produces("E-CFG-CROP-SIZE")(lambda tmp: build(NET + "[crop]\ncrop_height=20\ncrop_width=4\n"))
produces("E-CFG-DETECTION-INPUTS")(lambda tmp: build(NET + "[conn]\noutput=9\n[detection]\n"
                                                           "side=2\n"))
produces("E-CFG-GAUSSIAN-FILTERS")(lambda tmp: build(NET + "[conv]\nfilters=20\n"
                                                           "[Gaussian_yolo]\nmask=0\nclasses=1\n"))
produces("E-CFG-MASK-RANGE")(lambda tmp: build(NET + "[conv]\nfilters=10\n"
                                                     "[Gaussian_yolo]\nmask=1\nclasses=1\n"))
produces("E-CFG-LOCAL-PAD")(lambda tmp: build(NET + "[local]\nsize=5\npad=1\n"))
produces("E-CFG-RECURRENT-SIZE")(lambda tmp: build(NET + "[crnn]\nsize=3\n"))
produces("E-CFG-RECURRENT-SIZE")(lambda tmp: build(NET + "[conv_lstm]\nstride=2\npad=1\n"))
produces("E-CFG-RECURRENT-GROUPS")(lambda tmp: build(NET + "[crnn]\npad=1\ngroups=2\n"))
produces("E-CFG-RECURRENT-GROUPS")(
    lambda tmp: build(NET + "[conv]\nfilters=4\n[crnn]\npad=1\ngroups=2\noutput=2\nhidden=3\n"))
produces("E-CFG-CONTRASTIVE-YOLO")(lambda tmp: build(NET + "[conv]\n[contrastive]\n"))
produces("E-CFG-CONTRASTIVE-YOLO")(
    lambda tmp: build(NET + "[conv]\n[contrastive]\nyolo_layer=-1\n"))
produces("E-CFG-CONTRASTIVE-YOLO")(
    lambda tmp: build(NET + "[conv]\nfilters=12\n[conv]\nfilters=18\n[yolo]\nmask=0,1,2\n"
                            "num=3\nclasses=1\nembedding_layer=-2\n[route]\nlayers=1\n"
                            "[contrastive]\nyolo_layer=-2\n"))
produces("E-CFG-NET-SIZE")(lambda tmp: build("[net]\nwidth=0\nheight=16\nchannels=3\n[conv]\n"))
produces("E-CFG-NET-SIZE")(lambda tmp: build("[net]\nwidth=16\nheight=16\n[conv]\n"))
produces("E-CFG-BAD-REFERENCE")(lambda tmp: build(NET + "[conv]\n[route]\nlayers=5\n"))
produces("E-CFG-BAD-REFERENCE")(lambda tmp: build(NET + "[conv]\n[route]\nlayers=1\n"))
produces("E-CFG-BAD-REFERENCE")(lambda tmp: build(NET + "[conv]\n[shortcut]\nfrom=-9\n"))
produces("E-CFG-BAD-REFERENCE")(lambda tmp: build(NET + "[conv]\n[sam]\nfrom=3\n"))
produces("E-CFG-BAD-REFERENCE")(lambda tmp: build(NET + "[route]\nlayers=-1\n"))
produces("E-CFG-NOT-POSITIVE")(lambda tmp: build(NET + "[convolutional]\nfilters=0\n"))
produces("E-CFG-NOT-POSITIVE")(lambda tmp: build(NET + "[convolutional]\nstride=0\n"))
produces("E-CFG-NOT-POSITIVE")(lambda tmp: build(NET + "[convolutional]\nsize=-3\n"))
produces("E-CFG-NOT-POSITIVE")(lambda tmp: build(NET + "[maxpool]\nsize=2\nstride=0\n"))
produces("E-CFG-NOT-POSITIVE")(lambda tmp: build(NET + "[conv]\nfilters=6\n[yolo]\nclasses=0\n"))
produces("E-CFG-NOT-POSITIVE")(lambda tmp: build(NET + "[conv]\nfilters=6\n[yolo]\nnum=-1\n"))
produces("E-CFG-NOT-POSITIVE")(lambda tmp: build(NET + "[connected]\noutput=0\n"))
produces("E-CFG-NEGATIVE-PADDING")(lambda tmp: build(NET + "[convolutional]\npadding=-1\n"))
produces("E-CFG-NEGATIVE-PADDING")(lambda tmp: build(NET + "[maxpool]\npadding=-2\n"))
produces("E-CFG-INPUT-TOO-SMALL")(lambda tmp: build(NET + "[convolutional]\nsize=17\n"))
produces("E-CFG-INPUT-TOO-SMALL")(lambda tmp: build(NET + "[maxpool]\nsize=20\npadding=0\n"))
produces("E-CFG-INPUT-TOO-SMALL")(lambda tmp: build(NET + "[upsample]\nstride=-32\n"))
produces("E-CFG-CONV-GROUPS")(lambda tmp: build(NET + "[convolutional]\nfilters=4\ngroups=2\n"))
produces("E-CFG-ROUTE-GROUP-ID")(
    lambda tmp: build(NET + "[conv]\nfilters=4\n[route]\nlayers=0\ngroups=2\ngroup_id=2\n"))
produces("E-CFG-ROUTE-SIZES")(
    lambda tmp: build(NET + "[conv]\n[maxpool]\nsize=2\nstride=2\n[route]\nlayers=0,1\n"))
produces("E-CFG-ROUTE-GROUPS")(
    lambda tmp: build(NET + "[conv]\nfilters=3\n[route]\nlayers=0\ngroups=2\n"))
produces("E-CFG-YOLO-FILTERS")(
    lambda tmp: build(NET + "[conv]\nfilters=255\n[yolo]\nmask=0,1,2\nnum=6\nclasses=1\n"))
produces("E-CFG-YOLO-FILTERS")(
    lambda tmp: build(NET + "[maxpool]\n[yolo]\nmask=0\nnum=1\nclasses=1\n"))
produces("E-CFG-YOLO-FIRST")(lambda tmp: build(NET + "[yolo]\nmask=0\nclasses=1\n"))
produces("E-CFG-ANCHORS-COUNT")(
    lambda tmp: strict(NET + "[conv]\nfilters=6\n[yolo]\nmask=0\nnum=2\nclasses=1\n"
                             "anchors=10,14,23\n"))
produces("E-CFG-ANCHORS-COUNT")(
    lambda tmp: strict(NET + "[conv]\nfilters=6\n[region]\nnum=1\nclasses=1\n"
                             "anchors=1,2,3,4\n"))
produces("E-CFG-MASK-PAST-NUM")(
    lambda tmp: strict(NET + "[conv]\nfilters=6\n[yolo]\nmask=2\nnum=2\nclasses=1\n"
                             "anchors=1,2,3,4,5,6\n"))
produces("E-CFG-MASK-RANGE")(
    lambda tmp: build(NET + "[conv]\nfilters=6\n[yolo]\nmask=3\nnum=3\nclasses=1\n"))
produces("E-CFG-MASK-RANGE")(
    lambda tmp: build(NET + "[conv]\nfilters=6\n[yolo]\nmask=-1\nnum=3\nclasses=1\n"))
produces("E-CFG-REGION-FILTERS")(
    lambda tmp: build(NET + "[conv]\nfilters=20\n[region]\nnum=2\nclasses=1\n"))
produces("E-CFG-UNKNOWN-ACTIVATION")(lambda tmp: build(NET + "[conv]\nactivation=leakyy\n"))
produces("E-CFG-UPSAMPLE-STRIDE-ZERO")(lambda tmp: build(NET + "[upsample]\nstride=0\n"))
produces("E-CFG-REORG-DIVISIBLE")(lambda tmp: build(NET + "[reorg3d]\nstride=3\n"))
produces("E-CFG-REORG-DIVISIBLE")(lambda tmp: build(NET + "[reorg]\nstride=2\nreverse=1\n"))
produces("E-CFG-SHORTCUT-OPTION")(
    lambda tmp: build(NET + "[conv]\n[shortcut]\nfrom=-1\nweights_type=per_pixel\n"))
produces("E-CFG-SHORTCUT-OPTION")(
    lambda tmp: build(NET + "[conv]\n[shortcut]\nfrom=-1\nweights_normalization=l2\n"))
produces("E-CFG-SAM-SHAPES")(
    lambda tmp: build(NET + "[conv]\nfilters=4\n[conv]\nfilters=8\n[sam]\nfrom=0\n"))
produces("E-CFG-SCALE-CHANNELS-SHAPES")(
    lambda tmp: build(NET + "[conv]\nfilters=4\n[conv]\nfilters=4\n[scale_channels]\nfrom=0\n"))
produces("E-CFG-SOFTMAX-GROUPS")(lambda tmp: build(NET + "[avgpool]\n[softmax]\ngroups=2\n"))
produces("E-CFG-TREE")(lambda tmp: build(NET + "[avgpool]\n[softmax]\ntree=t.tree\n"))


@produces("E-MODEL-UNSUPPORTED")
def _model_option(tmp):
    return load_model(parse_cfg_text(NET + "[convolutional]\nantialiasing=1\n", "bad.cfg"))


@produces("E-MODEL-UNSUPPORTED")
def _model_reverse_upsample(tmp):
    return load_model(parse_cfg_text(NET + "[upsample]\nstride=-2\n", "bad.cfg"))


@produces("E-MODEL-RECURRENT-TRAINING")
def _train_recurrent(tmp):
    model = load_model(parse_cfg_text(NET + "[conv]\npad=1\n[crnn]\npad=1\n", "r.cfg"))
    import torch

    return model.train()(torch.zeros(1, 3, 16, 16))


@produces("E-MODEL-RESIZE")
def _model_resize(tmp):
    return load_model(parse_cfg_text(NET + "[connected]\noutput=4\n", "fc.cfg")).resize(32, 32)


_ONE_YOLO = NET + ("[convolutional]\nfilters=18\nsize=1\nactivation=linear\n[yolo]\n"
                   "mask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\n")


@produces("E-TRAIN-RANDOM")
def _train_random(tmp):
    from netsurgery.training.augment import MultiScale
    return MultiScale.from_cfg(parse_cfg_text(_ONE_YOLO + "random=-1\n", "t.cfg"), 16, 16)


@produces("E-TRAIN-RESIZE-STEP")
def _train_resize_step(tmp):
    from netsurgery.training.augment import MultiScale
    text = _ONE_YOLO.replace("channels=3", "channels=3\nresize_step=0") + "random=1\n"
    return MultiScale.from_cfg(parse_cfg_text(text, "t.cfg"), 16, 16)


@produces("E-TRAIN-YOLO-RESIZE")
def _train_yolo_resize(tmp):
    from netsurgery.training.augment import AugmentConfig
    return AugmentConfig.from_cfg(parse_cfg_text(_ONE_YOLO + "resize=0\n", "t.cfg"))


@produces("E-TRAIN-COUNTERS")
def _train_counters(tmp):
    from netsurgery.training.loss import DetectionLoss
    return DetectionLoss(build(_ONE_YOLO + "counters_per_class=1,2\n"))


@produces("E-CFG-TREE")
def _model_region_tree(tmp):
    return load_model(parse_cfg_text(NET + "[conv]\nfilters=6\n[region]\nnum=1\nclasses=1\n"
                                           "tree=t.tree\n", "bad.cfg"))


# -- weights ---------------------------------------------------------------------------------
TINY = NET + "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\n" \
             "[maxpool]\nsize=2\nstride=2\n[convolutional]\nfilters=2\nsize=1\n"


def tiny_layers():
    return build(TINY, "tiny.cfg").layers


def tiny_weights(extra: int = 0) -> bytes:
    floats = sum(a.count for _, arrays in file_layout(tiny_layers()) for a in arrays)
    return WeightsHeader().to_bytes() + np.zeros(floats + extra, "<f4").tobytes()


produces("E-WEIGHTS-NOT-FOUND")(lambda tmp: load_weights(tmp / "no.weights", tiny_layers()))
produces("E-WEIGHTS-FOLDER")(lambda tmp: load_weights(tmp, tiny_layers()))
produces("E-WEIGHTS-UNREADABLE")(
    lambda tmp: load_weights(write(tmp / "plain", "x") / "a.weights", tiny_layers()))
produces("E-WEIGHTS-TOO-SHORT")(lambda tmp: load_weights(write(tmp / "e.weights", b""),
                                                         tiny_layers()))
produces("E-WEIGHTS-TOO-SHORT")(lambda tmp: load_weights_bytes(tiny_weights()[:18],
                                                               tiny_layers(), "t.weights"))
produces("E-WEIGHTS-NEGATIVE-VERSION")(
    lambda tmp: load_weights_bytes(b"\xff" * 20, tiny_layers(), "t.weights"))
produces("E-WEIGHTS-ENDS-INSIDE")(
    lambda tmp: load_weights_bytes(tiny_weights()[:-4], tiny_layers(), "t.weights"))
produces("E-WEIGHTS-ENDS-INSIDE")(  # a cfg that does not match: 80-class file, 1-class cfg
    lambda tmp: load_weights_bytes(tiny_weights()[:100], tiny_layers(), "t.weights"))
produces("E-WEIGHTS-LEFT-OVER")(
    lambda tmp: load_weights_bytes(tiny_weights(extra=3), tiny_layers(), "t.weights"))
produces("E-WEIGHTS-PARTIAL")(
    lambda tmp: load_weights_bytes(tiny_weights()[:20 + 4 * 124], tiny_layers(), "t.weights",
                                   allow_partial=False))
produces("E-WEIGHTS-PARTIAL")(
    lambda tmp: load_weights_bytes(tiny_weights()[:20], tiny_layers(), "t.weights",
                                   allow_partial=False))
produces("E-WEIGHTS-HEADER-FIELD")(lambda tmp: WeightsHeader(0, 1, 0, 2**32).to_bytes())
produces("E-WEIGHTS-HEADER-FIELD")(lambda tmp: WeightsHeader(-1, 2, 5, 0).to_bytes())
produces("E-WEIGHTS-SAVE-NO-LAYER")(
    lambda tmp: save_weights(tmp / "s.weights", WeightsHeader(), tiny_layers(), {}))
produces("E-WEIGHTS-SAVE-NO-ARRAY")(
    lambda tmp: save_weights(tmp / "s.weights", WeightsHeader(), tiny_layers(),
                             {0: {"biases": np.zeros(4, "f4")}}))


@produces("E-WEIGHTS-SAVE-SIZE")
def _save_wrong_size(tmp):
    layers = tiny_layers()
    arrays = {spec.index: {a.name: np.zeros(a.count, "f4") for a in wanted}
              for spec, wanted in file_layout(layers)}
    arrays[2]["weights"] = np.zeros(5, "f4")
    save_weights(tmp / "s.weights", WeightsHeader(), layers, arrays)


# -- outputs ---------------------------------------------------------------------------------
produces("E-OUT-EXISTS")(lambda tmp: check_output(write(tmp / "out.cfg", "x"), [], False))
produces("E-OUT-IS-INPUT")(
    lambda tmp: check_output(tmp / "in.cfg", [write(tmp / "in.cfg", "x")], True))
produces("E-OUT-IS-INPUT")(  # the same file under another name
    lambda tmp: check_output(tmp / "sub" / ".." / "in.cfg", [write(tmp / "in.cfg", "x")],
                             True))

produces("E-OUT-FOLDER")(lambda tmp: check_output(tmp, [], True))
produces("E-OUT-CANNOT-WRITE")(
    lambda tmp: atomic_write_text(write(tmp / "plain", "x") / "out.cfg", "[net]\n"))

# -- datasets --------------------------------------------------------------------------------
produces("E-DATA-FILE-NOT-FOUND")(lambda tmp: load_data_file(tmp / "missing.data"))
produces("E-DATA-FILE-NOT-FOUND")(lambda tmp: load_names(tmp / "missing.names"))
produces("E-DATA-FOLDER")(lambda tmp: load_data_file(tmp))
produces("E-DATA-UNREADABLE")(lambda tmp: load_names(write(tmp / "plain", "x") / "c.names"))
produces("E-DATA-KEY-VALUE")(lambda tmp: load_data_file(write(tmp / "d.data", "classes 3\n")))
produces("E-DATA-KEY-VALUE")(lambda tmp: load_data_file(write(tmp / "d.data", "train=\n")))
produces("E-DATA-CLASSES")(lambda tmp: load_data_file(write(tmp / "d.data", "classes=0\n")))
produces("E-DATA-CLASSES")(lambda tmp: load_data_file(write(tmp / "d.data", "classes=two\n")))
produces("E-DATA-MISSING-KEY")(
    lambda tmp: load_data_file(write(tmp / "d.data", "classes=2\n")).require("valid"))
produces("E-DATA-MISSING-CLASSES")(
    lambda tmp: load_data_file(write(tmp / "d.data", "names=x\n")).require_classes())
produces("E-DATA-PATH-NOT-FOUND")(
    lambda tmp: load_data_file(write(tmp / "d.data", "classes=2\nvalid=nowhere.txt\n"))
    .require("valid"))
produces("E-DATA-NO-NAMES")(lambda tmp: load_names(write(tmp / "c.names", "\n\n")))
produces("E-DATA-N-CLASSES")(lambda tmp: load_dataset(write(tmp / "l.txt", ""), 0))


def _image_and_labels(tmp: Path, labels: str | bytes | None, name: str = "img.jpg") -> Path:
    image = write(tmp / "images" / name, b"\xff\xd8 not really a jpeg")
    if labels is not None:
        write(image.with_suffix(".txt"), labels)
    return write(tmp / "list.txt", f"{image}\n")


produces("E-DATA-MISSING-IMAGE")(
    lambda tmp: load_dataset(write(tmp / "list.txt", f"{tmp}/gone.jpg\n"), 2, strict=True))
produces("E-DATA-BAD-EXTENSION")(
    lambda tmp: load_dataset(_image_and_labels(tmp, "", "img.gif"), 2, strict=True))
produces("E-LABEL-MISSING")(lambda tmp: load_dataset(_image_and_labels(tmp, None), 2,
                                                     strict=True))
produces("E-LABEL-MISSING")(lambda tmp: read_labels(tmp / "none.txt", 2))
produces("E-LABEL-UNREADABLE")(lambda tmp: read_labels(write(tmp / "l.txt", b"0 \xff"), 2))
produces("E-LABEL-COLUMNS")(lambda tmp: read_labels(write(tmp / "l.txt", "0 0.5 0.5 0.1\n"), 2))
produces("E-LABEL-NOT-A-NUMBER")(
    lambda tmp: read_labels(write(tmp / "l.txt", "one 0.5 0.5 0.1 0.1\n"), 2))
produces("E-LABEL-NOT-A-NUMBER")(
    lambda tmp: read_labels(write(tmp / "l.txt", "0 0.5 nan 0.1 0.1\n"), 2))
produces("E-LABEL-CLASS-RANGE")(
    lambda tmp: load_dataset(_image_and_labels(tmp, "2 0.5 0.5 0.1 0.1\n"), 2, strict=True))
produces("E-LABEL-NOT-POSITIVE")(
    lambda tmp: read_labels(write(tmp / "l.txt", "0 0.5 0.5 0 0.1\n"), 2))
produces("E-LABEL-OUT-OF-RANGE")(
    lambda tmp: read_labels(write(tmp / "l.txt", "1 1.5 0.5 0.1 0.1\n"), 2))


# -- inputs, memory, detection, evaluation, task cfgs (issue 19) -------------------------------
produces("E-CHART-ARRAYS")(lambda tmp: check_arrays(["weights", "means"]))
produces("E-CHART-ARRAYS")(lambda tmp: check_arrays(["biases", "biases"]))
produces("E-OUT-TWICE")(lambda tmp: check_outputs([tmp / "a.json", tmp / "x" / ".." / "a.json"]))
produces("E-IN-NOT-REGULAR")(lambda tmp: load_cfg("/dev/zero"))
produces("E-IN-NOT-REGULAR")(lambda tmp: load_weights("/dev/null", tiny_layers()))
produces("E-IN-NOT-REGULAR")(lambda tmp: load_data_file("/dev/zero"))
produces("E-IN-TOO-LARGE")(
    lambda tmp: read_input_bytes(write(tmp / "big.cfg", "#" * 100), "cfg", limit=10))
produces("E-MEMORY-TOO-LARGE")(
    lambda tmp: load_model(parse_cfg_text(NET + "[convolutional]\nfilters=1000000000\n",
                                          "big.cfg")))
produces("E-MEMORY-TOO-LARGE")(lambda tmp: check_fits(build(TINY, "tiny.cfg"), limit=1000))
produces("E-DATA-BINARY")(lambda tmp: load_names(write(tmp / "c.names", b"cat\n\x00\x89PNG")))
produces("E-DATA-BINARY")(lambda tmp: load_data_file(write(tmp / "d.data", b"\x00\x01")))


def _tiny_yolo_model(tmp: Path, weights: bytes | None = None, nan: bool = False):
    cfg = write(tmp / "y.cfg", _ONE_YOLO)
    layers = build_network(cfg).layers
    arrays = random_arrays(layers)
    if nan:
        arrays[0]["biases"][1] = np.nan
    save_weights(tmp / "y.weights", WeightsHeader(), layers, arrays)
    if weights is not None:
        write(tmp / "y.weights", weights)
    return load_model(cfg, tmp / "y.weights", inference=True)


produces("E-DETECT-NO-IMAGES")(
    lambda tmp: run_detect_cli(tmp, [str((tmp / "empty").mkdir() or tmp / "empty")]))
produces("E-DETECT-NO-HEAD")(
    lambda tmp: heads_of(load_model(parse_cfg_text(TINY, "tiny.cfg"), inference=True)))
produces("E-DETECT-NOTHING-READ")(
    lambda tmp: run_detect_cli(tmp, [str(write(tmp / "bad.jpg", b"not an image"))]))


def run_detect_cli(tmp: Path, images: list[str]):
    """The detect command as the CLI runs it (its NetsurgeryError not turned into exit 2)."""
    from netsurgery.cli.app import main

    _tiny_yolo_model(tmp)
    main.main(["detect", str(tmp / "y.cfg"), str(tmp / "y.weights"), *images],
              standalone_mode=False)


@produces("E-IMAGE-TOO-LARGE")
def _image_too_large(tmp):
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    load_image(write(tmp / "huge.png", png))


produces("E-DETECT-NAMES-COUNT")(lambda tmp: read_names(write(tmp / "c.names", "cat\n"), 3))
produces("E-DETECT-WEIGHTS-INCOMPLETE")(
    lambda tmp: check_detector_weights(_tiny_yolo_model(tmp, WeightsHeader().to_bytes()),
                                       tmp / "y.weights"))
produces("E-DETECT-WEIGHTS-NONFINITE")(
    lambda tmp: check_detector_weights(_tiny_yolo_model(tmp, nan=True), tmp / "y.weights"))


def _eval_data(tmp: Path, names: str = "a\n", images: int = 0, classes: int = 1) -> Path:
    lines = []
    for i in range(images):
        lines.append(str(write(tmp / f"im{i}.jpg", b"not a jpeg")))
    write(tmp / "valid.txt", "".join(f"{line}\n" for line in lines))
    write(tmp / "c.names", names)
    return write(tmp / "e.data", f"classes={classes}\nvalid={tmp / 'valid.txt'}\n"
                                 f"names={tmp / 'c.names'}\n")


produces("E-EVAL-NAMES-COUNT")(
    lambda tmp: evaluate_model(_tiny_yolo_model(tmp), _eval_data(tmp, "a\n", classes=2)))
produces("E-EVAL-NOTHING-SCORED")(lambda tmp: evaluate_model(_tiny_yolo_model(tmp),
                                                             _eval_data(tmp)))
produces("E-EVAL-NOTHING-SCORED")(lambda tmp: evaluate_model(_tiny_yolo_model(tmp),
                                                             _eval_data(tmp, images=2)))
produces("E-EVAL-DATA-TWICE")(lambda tmp: _data_by_head(("a.data", "b.data"), None))
@produces("E-EVAL-UNKNOWN-HEAD")
def _eval_unknown_head(tmp):
    from netsurgery.cli.app import main

    _tiny_yolo_model(tmp)
    main.main(["eval", str(tmp / "y.cfg"), str(tmp / "y.weights"), "--data",
               f"logo={_eval_data(tmp)}"], standalone_mode=False)


def _shapes_data(tmp: Path, images: int) -> Path:
    from netsurgery.training.synth import make_shapes_dataset

    return make_shapes_dataset(tmp / "ds", images, 0, (32, 32), valid_fraction=0.5).data


produces("E-TASK-NO-YOLO")(lambda tmp: task_cfg_for_dataset(parse_cfg_text(TINY, "t.cfg"),
                                                            None, 3))
produces("E-TASK-CLASSES-DIFFER")(
    lambda tmp: task_cfg_for_dataset(parse_cfg_text(_ONE_YOLO, "y.cfg"), _shapes_data(tmp, 2),
                                     7))
produces("E-TASK-TOO-FEW-BOXES")(
    lambda tmp: task_cfg_for_dataset(parse_cfg_text(_ONE_YOLO, "y.cfg"),
                                     write(tmp / "t.data", f"classes=1\ntrain="
                                                           f"{write(tmp / 'l.txt', '')}\n")))
produces("E-TASK-TOO-FEW-BOXES")(
    lambda tmp: task_cfg_for_dataset(parse_cfg_text(_ONE_YOLO, "y.cfg"), _shapes_data(tmp, 2)))

# -- merge -----------------------------------------------------------------------------------
MERGE_CFG = NET + "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n" \
                  "[convolutional]\nfilters={filters}\nsize=1\nactivation=linear\n" \
                  "[yolo]\nmask=0\nanchors=1,1,2,2\nnum=2\nclasses={classes}\n"


def merge_files_on_disk(tmp: Path, name: str, classes: int = 1, seed: int = 0,
                        cfg_text: str | None = None) -> tuple[str, str]:
    text = cfg_text or MERGE_CFG.format(filters=classes + 5, classes=classes)
    cfg = write(tmp / f"{name}.cfg", text)
    layers = build_network(cfg).layers
    rng = np.random.default_rng(seed)
    arrays = {spec.index: {a.name: rng.standard_normal(a.shape).astype("f4") for a in wanted}
              for spec, wanted in file_layout(layers)}
    save_weights(tmp / f"{name}.weights", WeightsHeader(), layers, arrays)
    return str(cfg), str(tmp / f"{name}.weights")


def graphs(tmp: Path, task_seed: int = 0, task_cfg: str | None = None, classes: int = 1):
    base = load_weighted(*merge_files_on_disk(tmp, "base"))
    task = load_weighted(*merge_files_on_disk(tmp, "task", classes, task_seed, task_cfg))
    return base, task


produces("E-MERGE-NO-TASK")(lambda tmp: merge(graphs(tmp)[0], []))
produces("E-MERGE-NAMES-UNIQUE")(
    lambda tmp: merge(graphs(tmp)[0], [TaskInput("base", graphs(tmp)[1], 0)]))
produces("E-MERGE-TASK-SYNTAX")(lambda tmp: parse_task_option("logo", 3))
produces("E-MERGE-TASK-SYNTAX")(lambda tmp: parse_task_option("logo=a.cfg", 3))
produces("E-MERGE-TASK-K")(lambda tmp: parse_task_option("logo=a.cfg:a.weights@-1", 3))
produces("E-MERGE-NO-SHARE-POINT")(lambda tmp: parse_task_option("logo=a.cfg:a.weights", None))
produces("E-MERGE-EMPTY-NAME")(lambda tmp: parse_task_option("=a.cfg:a.weights", 3))
produces("E-MERGE-BEYOND")(lambda tmp: merge(graphs(tmp)[0], [TaskInput("t", graphs(tmp)[1],
                                                                        7)]))
produces("E-MERGE-NET-DIFFERS")(
    lambda tmp: merge(*(lambda b, t: (b, [TaskInput("t", t, 0)]))(
        *graphs(tmp, task_cfg=MERGE_CFG.format(filters=6, classes=1)
                .replace("width=16", "width=32")))))
produces("E-MERGE-LAYER-TYPE")(
    lambda tmp: merge(*(lambda b, t: (b, [TaskInput("t", t, 0)]))(
        *graphs(tmp, task_cfg=NET + "[maxpool]\nsize=1\nstride=1\n[convolutional]\nfilters=6"
                                    "\nsize=1\n[yolo]\nmask=0\nanchors=1,1,2,2\nnum=2\n"
                                    "classes=1\n"))))
produces("E-MERGE-OPTIONS-DIFFER")(
    lambda tmp: merge(*(lambda b, t: (b, [TaskInput("t", t, 0)]))(
        *graphs(tmp, task_cfg=MERGE_CFG.format(filters=6, classes=1)
                .replace("activation=leaky", "activation=mish")))))
produces("E-MERGE-TRUNK-DIFFERS")(
    lambda tmp: merge(*(lambda b, t: (b, [TaskInput("t", t, 0)]))(*graphs(tmp, task_seed=5))))


@produces("E-MERGE-ARRAY")
def _merge_task_without_weights(tmp):
    base = load_weighted(*merge_files_on_disk(tmp, "base"))
    task = load_weighted(merge_files_on_disk(tmp, "task")[0])  # cfg only: no arrays
    merge(base, [TaskInput("t", task, 0)])


@produces("E-MERGE-CLASS-COUNTS")
def _merge_mixed_classes(tmp):
    text = MERGE_CFG.format(filters=6, classes=1) + \
        "[route]\nlayers=0\n[convolutional]\nfilters=7\nsize=1\nactivation=linear\n" \
        "[yolo]\nmask=1\nanchors=1,1,2,2\nnum=2\nclasses=2\n"
    base = load_weighted(*merge_files_on_disk(tmp, "base", cfg_text=text))
    task = load_weighted(*merge_files_on_disk(tmp, "task"))
    merge(base, [TaskInput("t", task, 0)])


def _merged(tmp: Path, common: bool = False):
    base, task = graphs(tmp)
    return merge(base, [TaskInput("t", task, 0)], common_classes=common)


produces("E-MERGE-NO-HEAD")(lambda tmp: split(*_merged(tmp), "logo"))
produces("E-MERGE-SPLIT-COMMON")(lambda tmp: split(*_merged(tmp, common=True), "t"))
produces("E-MERGE-HEADS-NOT-FOUND")(lambda tmp: load_heads(tmp / "m.heads.json"))
produces("E-MERGE-HEADS-JSON")(lambda tmp: load_heads(write(tmp / "m.heads.json", "{base:")))
produces("E-MERGE-HEADS-FILE")(lambda tmp: load_heads(write(tmp / "m.heads.json", "[]")))
produces("E-MERGE-HEADS-FILE")(
    lambda tmp: load_heads(write(tmp / "m.heads.json", json.dumps({"schema": "other/1"}))))
produces("E-MERGE-HEADS-FILE")(
    lambda tmp: parse_heads({"schema": "netsurgery.heads/2", "base": {}, "tasks": [{}]},
                            "m.heads.json"))
produces("E-HEADS-NOT-A-FILE")(lambda tmp: load_heads(tmp))


def _legacy_heads_json(tmp: Path) -> dict:
    """A format-1 heads file as merge wrote it before format 2."""
    data = _merged(tmp)[1].to_json()
    del data["schema"]
    data["format"] = "netsurgery-heads/1"
    return data


@produces("E-HEADS-MISMATCH")
def _heads_of_another_network(tmp):
    base, task = graphs(tmp)
    check_heads(_merged(tmp)[1], base.network)


@produces("E-HEADS-LEGACY-NAMES")
def _legacy_heads_without_names_file(tmp):
    data = _legacy_heads_json(tmp)
    data["base"].pop("class_names")
    data["base"]["names_file"] = "weights/coco.names"
    parse_heads(data, str(tmp / "m.heads.json"))


@produces("E-HEADS-LEGACY-COUNT")
def _legacy_heads_short_names_file(tmp):
    data = _legacy_heads_json(tmp)
    data["tasks"][0].update(class_names=None, names_file="t.names", classes=3)
    write(tmp / "t.names", "car\nbus\n")
    parse_heads(data, str(tmp / "m.heads.json"))


@produces("E-MERGE-NAMES-HEAD")
def _merge_names_of_no_head(tmp):
    cfg, weights = merge_files_on_disk(tmp, "base")
    merge_files(cfg, weights, [f"t={cfg}:{weights}"], str(tmp / "m"), 0,
                names={"logo": "logo.names"})


@produces("E-MERGE-NAMES-COUNT")
def _merge_names_count(tmp):
    base, task = graphs(tmp)
    names = write(tmp / "t.names", "car\nbus\n")
    merge(base, [TaskInput("t", task, 0, str(names))], common_classes=True)


@produces("E-MERGE-CONV-BEFORE-YOLO")
def _merge_pad_without_weights(tmp):
    cfg = merge_files_on_disk(tmp, "base")[0]
    merge(load_weighted(cfg), [TaskInput("t", load_weighted(cfg), 0)], common_classes=True)


# -- gates -----------------------------------------------------------------------------------
def _merged_for_gate(tmp):
    base, task = graphs(tmp)
    return merge(base, [TaskInput("t", task, 0)])  # 16×16: trunk 0, base head 1..2


produces("E-GATE-BASE-HEAD")(
    lambda tmp: check_gate_target(_merged_for_gate(tmp)[1], "base", None))
produces("E-GATE-AT")(lambda tmp: check_gate_target(_merged_for_gate(tmp)[1], "t", 9))
produces("E-GATE-RECALL")(lambda tmp: calibrate_threshold([0.5] * 400, recall=1.0))
produces("E-GATE-FEW-POSITIVES")(lambda tmp: calibrate_threshold([0.5] * 40, recall=0.99))


@produces("E-GATE-ALREADY")
def _gate_twice(tmp):
    heads = _merged_for_gate(tmp)[1]
    heads.group("t").gate = Gate(0, [5, 8], 4, 0.5, 0.9, 0.95, 30, 0.9, 1.0, 0.1, 30, 30)
    check_gate_target(heads, "t", None)


def _gate_on_stream(tmp, negatives: float, valid_fraction: float):
    from netsurgery.training.gate import train_gate
    from netsurgery.training.synth import make_shapes_dataset

    merged, heads = _merged_for_gate(tmp)
    data = make_shapes_dataset(tmp / "stream", 6, seed=0, size=(32, 32), classes=("circle",),
                               valid_fraction=valid_fraction, negative_fraction=negatives)
    train_gate(merged, heads, "t", data.data)


produces("E-GATE-NEEDS-BOTH")(lambda tmp: _gate_on_stream(tmp, 0.0, 0.5))
produces("E-GATE-VALID-SMALL")(lambda tmp: _gate_on_stream(tmp, 0.5, 0.1))
# -- ONNX export and onnxruntime ---------------------------------------------------------------
def _tiny_model(tmp: Path, text: str = MERGE_CFG.format(filters=6, classes=1)):
    return load_model(write(tmp / "t.cfg", text))


def _export(tmp: Path, **kwargs):
    from netsurgery.export import build_onnx, export_heads

    model = _tiny_model(tmp, kwargs.pop("text", MERGE_CFG.format(filters=6, classes=1)))
    return build_onnx(model, export_heads(model), **kwargs)


@produces("E-ONNX-NOT-INSTALLED")
def _onnx_missing(tmp):
    import builtins

    from netsurgery.export.graph import require

    real = builtins.__import__
    builtins.__import__ = lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) \
        if name == "onnx" else real(name, *a, **k)
    try:
        require("onnx")
    finally:
        builtins.__import__ = real


@produces("E-ONNX-LAYER")
def _onnx_no_emitter(tmp):
    from netsurgery.export import layers

    emitter = layers.EMITTERS.pop("convolutional")
    try:
        _export(tmp)
    finally:
        layers.EMITTERS["convolutional"] = emitter


produces("E-ONNX-LAYER")(lambda tmp: _export(tmp, text=NET + "[local]\nfilters=2\nsize=3\npad=1\n"))
produces("E-ONNX-POOL-PADDING")(lambda tmp: _export(tmp, text=NET + "[maxpool]\nsize=2\n"
                                                    "stride=1\npadding=4\n"))
produces("E-ONNX-DECODE-REGION")(lambda tmp: _export(
    tmp, decode=True, text=NET + "[convolutional]\nfilters=14\nsize=1\n[region]\nclasses=2\n"
    "num=2\n"))
produces("E-ONNX-OPSET")(lambda tmp: _export(tmp, opset=12))
produces("E-ONNX-BATCH")(lambda tmp: _export(tmp, batch=0))


@produces("E-ONNX-TOO-BIG")
def _onnx_too_big(tmp):
    from netsurgery.export import onnx_export

    limit, onnx_export.MAX_BYTES = onnx_export.MAX_BYTES, 10
    try:
        _export(tmp)
    finally:
        onnx_export.MAX_BYTES = limit


def _onnx_runner(tmp: Path, onnx_file: Path, size=None):
    from netsurgery.detection.runner import load_runner

    cfg = write(tmp / "r.cfg", MERGE_CFG.format(filters=6, classes=1))
    return load_runner(cfg, "unused.weights", size, onnx_path=onnx_file)


produces("E-ONNX-FILE-NOT-FOUND")(lambda tmp: _onnx_runner(tmp, tmp / "missing.onnx"))
produces("E-ONNX-LOAD")(lambda tmp: _onnx_runner(tmp, write(tmp / "x.onnx", b"not onnx")))


@produces("E-ONNX-NOT-OURS")
def _onnx_foreign(tmp):
    import onnx

    proto = onnx.load_from_string(_export(tmp).data)
    del proto.metadata_props[:]
    _onnx_runner(tmp, write(tmp / "f.onnx", proto.SerializeToString()))


produces("E-ONNX-INPUT-SIZE")(
    lambda tmp: _onnx_runner(tmp, write(tmp / "a.onnx", _export(tmp).data), (32, 32)))
produces("E-ONNX-DECODED")(
    lambda tmp: _onnx_runner(tmp, write(tmp / "d.onnx", _export(tmp, decode=True).data)))
produces("E-ONNX-NO-OUTPUT")(
    lambda tmp: _onnx_runner(tmp, write(tmp / "l.onnx", _export(tmp, extra_layers=[0]).data)
                             ).run(__import__("torch").zeros(1, 3, 16, 16), [0, 5]))
produces("E-RUNTIME-NAME")(
    lambda tmp: __import__("netsurgery.detection.runner").detection.runner.load_runner(
        "x.cfg", "x.weights", runtime="tvm"))
produces("E-RUNTIME-DEVICE")(
    lambda tmp: __import__("netsurgery.detection.runner").detection.runner.load_runner(
        "x.cfg", "x.weights", runtime="onnxruntime", device="cuda"))


# -- suggest-k --------------------------------------------------------------------------------
def _tiny_yolo_network():
    from conftest import shared_path

    return build_network(shared_path("darknet-cfg", "yolov3-tiny.cfg"))


def _shapes_data(tmp, classes: int = 3) -> Path:
    """A .data file whose valid list is empty."""
    import cv2

    image = tmp / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    write(tmp / "a.txt", "0 0.5 0.5 0.2 0.2\n")
    write(tmp / "train.txt", f"{image}\n")
    write(tmp / "valid.txt", "")
    return write(tmp / "s.data", f"classes = {classes}\ntrain = {tmp / 'train.txt'}\n"
                                 f"valid = {tmp / 'valid.txt'}\n")


def _suggest(**options):
    return suggest_k("a.cfg", "a.weights", "a.data", **options)


produces("E-SUGGEST-NO-CANDIDATES")(lambda tmp: check_candidates(_tiny_yolo_network(), []))
produces("E-SUGGEST-CANDIDATES")(lambda tmp: check_candidates(_tiny_yolo_network(), [4, 15]))
produces("E-SUGGEST-BUDGET")(lambda tmp: _suggest(budget=1.5))
produces("E-SUGGEST-BUDGET")(lambda tmp: _suggest(budget=0.0))
produces("E-SUGGEST-MEMORY")(
    lambda tmp: check_cache_fits(_tiny_yolo_network(), [0, 13], 30000, 10000, limit=2**30))
produces("E-SUGGEST-DTYPE")(lambda tmp: _suggest(dtype="fp32"))
produces("E-SUGGEST-TOLERANCE")(lambda tmp: _suggest(tolerance=-1.0))
produces("E-SUGGEST-ITERATIONS")(lambda tmp: _suggest(iterations=0))
produces("E-SUGGEST-CLASSES")(
    lambda tmp: load_task(
        _tiny_yolo_network().path, "a.weights", _tiny_yolo_network().path, _shapes_data(tmp)))
produces("E-SUGGEST-NO-VALID")(lambda tmp: load_lists(_shapes_data(tmp)))
produces("E-SUGGEST-SWEEP-JSON")(
    lambda tmp: load_sweep_maps([write(tmp / "sweep.json", "{}")]))
produces("E-SUGGEST-SWEEP-JSON")(
    lambda tmp: load_sweep_maps([write(tmp / "sweep.json", "not json")]))


# =============================================================================================
# Tests
# =============================================================================================
@produces("E-SWEEP-SETTINGS-DIFFER")
def _sweep_settings_differ(tmp):
    from netsurgery.analysis.sweep import SweepPlan, _compare_earlier

    write(tmp / "k_3" / "result.json", json.dumps({"settings": {"iterations": 30}, "point": {}}))
    _compare_earlier(SweepPlan(3, tmp / "k_3", None, {"iterations": 60}), overwrite=False)


@produces("E-SWEEP-UNRECORDED-RUN")
def _sweep_unrecorded_run(tmp):
    from netsurgery.analysis.sweep import SweepPlan, _compare_earlier

    write(tmp / "k_3" / "task_state.json", "{}")
    _compare_earlier(SweepPlan(3, tmp / "k_3", None, {"iterations": 60}), overwrite=False)


CATALOGUE = read_catalogue() if DOC.exists() else {}
CASES = [(ident, i) for ident in sorted(PRODUCERS) for i in range(len(PRODUCERS[ident]))]


def test_catalogue_is_well_formed():
    assert DOC.exists(), f"{DOC} is missing"
    assert len(CATALOGUE) >= 60
    kinds = [(e.pattern, e.type) for e in CATALOGUE.values()]
    assert len(set(kinds)) == len(kinds), "two entries with one message and type"
    for entry in CATALOGUE.values():
        assert hasattr(errors_module, entry.type), f"{entry.id}: unknown type {entry.type}"
        body = DOC.read_text(encoding="utf-8").split(f"### {entry.id}", 1)[1].split("### ")[0]
        assert "**Cause:**" in body and "**Fix:**" in body, f"{entry.id}: cause and fix"


def test_every_documented_error_has_a_producer():
    assert sorted(set(CATALOGUE) - set(PRODUCERS)) == []


def test_every_producer_is_documented():
    assert sorted(set(PRODUCERS) - set(CATALOGUE)) == []


@pytest.mark.parametrize("ident, n", CASES, ids=[f"{i}-{n}" for i, n in CASES])
def test_documented_error(ident, n, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in producers land in the test's folder
    entry = CATALOGUE.get(ident)
    if entry is None:
        pytest.fail(f"{ident} is not documented in docs/errors.md")
    with pytest.raises(NetsurgeryError) as info:
        PRODUCERS[ident][n](tmp_path)
    exc = info.value
    assert type(exc).__name__ == entry.type, f"{ident}: {type(exc).__name__}: {exc}"
    message = str(exc)
    assert entry.regex().fullmatch(message), \
        f"{ident}: message does not match the catalogue\n  got:     {message}\n" \
        f"  pattern: {entry.pattern}"
    assert "\n" not in message, "a user error is one line"


def test_placeholders_match_only_what_they_stand_for():
    entry = Entry("E-X", "<file>:<line>: [<section>] unknown key '<key>'", "CfgError")
    assert entry.regex().fullmatch("a.cfg:3: [conv] unknown key 'filter'")
    assert not entry.regex().fullmatch("a.cfg:3: [conv] unknown key filter")
    assert not entry.regex().fullmatch("a.cfg:3: conv unknown key 'filter'")


# =============================================================================================
# CLI error policy
# =============================================================================================
def test_user_error_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.cfg"
    assert run(["info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"netsurgery: error: {missing}: file not found"]


def test_user_error_in_a_cfg_names_file_and_line(tmp_path, capsys):
    cfg = write(tmp_path / "typo.cfg", NET + "[convolutional]\nfilters=8\nszie=3\n")
    message = (f"{cfg}:7: [convolutional] unknown key 'szie': Darknet does not read it in "
               "[convolutional] (typo? did you mean 'size'?)")
    assert run(["info", "--strict", str(cfg)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert 1 <= len(lines) <= 2
    assert lines[0] == f"netsurgery: error: {message}"
    # without --strict: Darknet's leniency, the same text as a warning, and the table
    assert run(["info", str(cfg)]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"netsurgery: warning: {message}\n"
    assert "total: " in captured.out


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    missing = tmp_path / "missing.cfg"
    assert run(["--debug", "info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "netsurgery.errors.CfgError" in err
    assert err.strip().splitlines()[-1] == f"netsurgery: error: {missing}: file not found"


def _break_build_network(monkeypatch):
    import netsurgery.cli.info as info_cli

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(info_cli, "build_network", broken)


def test_internal_error_exits_1_with_a_hint_to_report_it(tmp_path, capsys, monkeypatch):
    _break_build_network(monkeypatch)
    cfg = write(tmp_path / "ok.cfg", NET + "[convolutional]\nfilters=2\n")
    assert run(["info", str(cfg)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "netsurgery: internal error: RuntimeError: simulated bug"
    assert len(lines) == 2 and "bug" in lines[1] and "--debug" in lines[1] and \
        "report" in lines[1]


def test_internal_error_with_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    _break_build_network(monkeypatch)
    cfg = write(tmp_path / "ok.cfg", NET + "[convolutional]\nfilters=2\n")
    assert run(["--debug", "info", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "RuntimeError: simulated bug" in err


def test_bad_option_is_a_usage_error_exit_2(capsys):
    assert run(["info", "--size", "0,5", "x.cfg"]) == 2
    assert "expected two positive integers W,H" in capsys.readouterr().err


def test_cli_in_a_subprocess_exit_code_and_stderr(tmp_path):
    cfg = write(tmp_path / "bad.cfg", NET + "[convolutional]\nfilters=0\n")
    proc = subprocess.run([sys.executable, "-m", "netsurgery", "info", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"netsurgery: error: {cfg}:6: [convolutional] layer 0: filters=0: expected an "
        "integer ≥ 1"]
    assert proc.stdout == ""
