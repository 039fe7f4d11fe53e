"""Every error documented in docs/errors.md is produced here from a small input and its text
is matched against the documented pattern; every producer here has a documented entry. Also
the CLI's error policy: user errors exit 2 with one or two lines, internal errors exit 1 with a
hint, ``--debug`` shows the traceback."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from netsurgery import errors as errors_module
from netsurgery.analysis.suggest import check_candidates, load_sweep_maps, suggest_k
from netsurgery.analysis.tails import load_lists, load_task
from netsurgery.cli.app import run
from netsurgery.darknet.cfg import load_cfg, parse_cfg_text
from netsurgery.darknet.model import load_model
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import (
    WeightsHeader,
    file_layout,
    load_weights,
    load_weights_bytes,
    save_weights,
)
from netsurgery.errors import NetsurgeryError
from netsurgery.fileio import atomic_write_text, check_output
from netsurgery.surgery.editing import load_graph
from netsurgery.surgery.merge import (
    MergedHeads,
    TaskInput,
    load_heads,
    merge,
    parse_task_option,
    split,
)
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


def build(text: str, path: str = "bad.cfg"):
    return build_network(parse_cfg_text(text, path))


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
produces("E-CFG-UNKNOWN-KEY")(lambda tmp: build(NET + "[convolutional]\nfilter=16\n"))
produces("E-CFG-UNKNOWN-KEY")(lambda tmp: build(NET + "[maxpool]\nfilters=16\n"))
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
produces("E-CFG-UNSUPPORTED-LAYER")(lambda tmp: build(NET + "[lstm]\noutput=4\n"))
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
    lambda tmp: build(NET + "[conv]\nfilters=6\n[yolo]\nmask=0\nnum=2\nclasses=1\n"
                            "anchors=10,14,23\n"))
produces("E-CFG-ANCHORS-COUNT")(
    lambda tmp: build(NET + "[conv]\nfilters=6\n[region]\nnum=1\nclasses=1\n"
                            "anchors=1,2,3,4\n"))
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
    base = load_graph(*merge_files_on_disk(tmp, "base"))
    task = load_graph(*merge_files_on_disk(tmp, "task", classes, task_seed, task_cfg))
    return base, task


produces("E-MERGE-NO-TASK")(lambda tmp: merge(graphs(tmp)[0], []))
produces("E-MERGE-NAMES-UNIQUE")(
    lambda tmp: merge(graphs(tmp)[0], [TaskInput("base", graphs(tmp)[1], 0)]))
produces("E-MERGE-TASK-SYNTAX")(lambda tmp: parse_task_option("logo", 3))
produces("E-MERGE-TASK-SYNTAX")(lambda tmp: parse_task_option("logo=a.cfg", 3))
produces("E-MERGE-TASK-K")(lambda tmp: parse_task_option("logo=a.cfg:a.weights@x", 3))
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
    base = load_graph(*merge_files_on_disk(tmp, "base"))
    task = load_graph(merge_files_on_disk(tmp, "task")[0])  # cfg only: no arrays
    merge(base, [TaskInput("t", task, 0)])


@produces("E-MERGE-CLASS-COUNTS")
def _merge_mixed_classes(tmp):
    text = MERGE_CFG.format(filters=6, classes=1) + \
        "[route]\nlayers=0\n[convolutional]\nfilters=7\nsize=1\nactivation=linear\n" \
        "[yolo]\nmask=1\nanchors=1,1,2,2\nnum=2\nclasses=2\n"
    base = load_graph(*merge_files_on_disk(tmp, "base", cfg_text=text))
    task = load_graph(*merge_files_on_disk(tmp, "task"))
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
    lambda tmp: load_heads(write(tmp / "m.heads.json", json.dumps({"format": "other/1"}))))
produces("E-MERGE-HEADS-FILE")(
    lambda tmp: MergedHeads.from_json({"format": "netsurgery-heads/1", "base": {}},
                                      "m.heads.json"))


@produces("E-MERGE-NAMES-READ")
def _merge_names_unreadable(tmp):
    base, task = graphs(tmp)
    merge(base, [TaskInput("t", task, 0, str(tmp / "missing.names"))], common_classes=True)


@produces("E-MERGE-NAMES-COUNT")
def _merge_names_count(tmp):
    base, task = graphs(tmp)
    names = write(tmp / "t.names", "car\nbus\n")
    merge(base, [TaskInput("t", task, 0, str(names))], common_classes=True)


@produces("E-MERGE-CONV-BEFORE-YOLO")
def _merge_pad_without_weights(tmp):
    cfg = merge_files_on_disk(tmp, "base")[0]
    merge(load_graph(cfg), [TaskInput("t", load_graph(cfg), 0)], common_classes=True)


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
    assert run(["info", str(cfg)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert 1 <= len(lines) <= 2
    assert lines[0] == (f"netsurgery: error: {cfg}:7: [convolutional] unknown key 'szie': "
                        "Darknet does not read it in [convolutional] (typo?)")


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
