"""The heads file of a merged network (``OUT.heads.json``): which layers belong to which
detector, with everything needed to use them and nothing outside the file.

Format ``netsurgery.heads/2`` (JSON Schema: ``docs/schemas/heads.schema.json``)::

    {"schema": "netsurgery.heads/2",
     "common_classes": null,                      # or the padded class list (--common-classes)
     "base":  {"name": "coco", "classes": 80, "class_names": [...80 names],
               "tail": [0, 23], "yolo_layers": [16, 23], "class_map": null},
     "tasks": [{"name": "text", "classes": 3, "class_names": ["text", "line", "logo"],
                "share_until": 8, "route": 24, "tail": [25, 39], "yolo_layers": [32, 39],
                "class_map": null,
                "header": {"major": 0, "minor": 2, "revision": 5, "seen": 64000},
                "trunk_cfg": "[net]\\nwidth=416\\n...[convolutional]\\n..."}]}

Layer indices are Darknet's in the merged network. ``tail`` is the inclusive range of a
head's own layers (the base: its whole network); a task also reads the trunk 0..share_until
through the ``[route] layers=share_until`` at ``route``. ``header`` is the task's own weights
header and ``trunk_cfg`` its own ``[net]`` and layers 0..share_until as cfg text (comments and
training keys such as ``stopbackward=1`` kept), so ``split`` gives its files back as they were.
A task may also hold a ``gate`` (:class:`~netsurgery.surgery.gates.Gate`: its layer range after
the last tail, the base layer it reads, its threshold and calibration figures).

Every reader goes through :func:`load_heads` (types and ranges of every field, one line naming
the first bad one) and :func:`check_heads` (the file against the network it is used with).
Files of format ``netsurgery-heads/1`` (class names by a path) still load when their names
files are found, relative to the heads file first, then to the working directory.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from netsurgery.darknet.cfg import parse_cfg_text
from netsurgery.darknet.network import Network, build_network
from netsurgery.darknet.weights import WeightsHeader
from netsurgery.errors import CfgError, NetsurgeryError, UsageError
from netsurgery.fileio import atomic_write_text

from .gates import GATE_KEYS, GATE_LAYERS, Gate

HEADS_SCHEMA = "netsurgery.heads/2"
LEGACY_FORMAT = "netsurgery-heads/1"
MAX_HEADS_FILE = 64 << 20  # bytes; a real one is a few KB (80 COCO names: ~1 KB)
_INT32 = 2**31 - 1


@dataclass
class HeadGroup:
    """The layers of one detector in a merged network (the base, or a task)."""

    name: str
    yolo_layers: list[int]
    classes: int
    class_names: list[str]
    tail: list[int]  # [first, last] merged indices of the head's own layers
    share_until: int | None = None  # None for the base
    route: int | None = None  # the [route] that jumps back to the trunk (tasks only)
    class_map: list[int] | None = None  # with common classes: own class j → common index
    header: WeightsHeader | None = None  # the task's own weights header (split gives it back)
    trunk_cfg: str | None = None  # the task's own [net] + layers 0..k as cfg text
    gate: Gate | None = None  # a task's gate (see netsurgery.surgery.gates)

    @property
    def is_base(self) -> bool:
        return self.route is None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "classes": self.classes,
                               "class_names": list(self.class_names)}
        if not self.is_base:
            out.update(share_until=self.share_until, route=self.route)
        out.update(tail=list(self.tail), yolo_layers=list(self.yolo_layers),
                   class_map=self.class_map)
        if not self.is_base:
            h = self.header or WeightsHeader()
            out["header"] = {"major": h.major, "minor": h.minor, "revision": h.revision,
                             "seen": h.seen}
            out["trunk_cfg"] = self.trunk_cfg
        if self.gate is not None:
            out["gate"] = self.gate.to_json()
        return out


@dataclass
class MergedHeads:
    """Contents of ``OUT.heads.json``; ``path`` is where it was read from (for messages)."""

    base: HeadGroup
    tasks: list[HeadGroup]
    common_classes: list[str] | None = None
    path: str | None = field(default=None, compare=False)

    def groups(self) -> list[HeadGroup]:
        return [self.base, *self.tasks]

    def group(self, name: str) -> HeadGroup:
        for g in self.groups():
            if g.name == name:
                return g
        raise UsageError(f"no head named '{name}': expected one of "
                         f"{', '.join(g.name for g in self.groups())}")

    @property
    def n_layers(self) -> int:
        """Layers of the merged network described: the last head's tail, then the gates."""
        gates = [g.gate.layers[1] for g in self.tasks if g.gate is not None]
        return max([self.groups()[-1].tail[1]] + gates) + 1

    def to_json(self) -> dict:
        return {"schema": HEADS_SCHEMA, "common_classes": self.common_classes,
                "base": self.base.to_json(), "tasks": [t.to_json() for t in self.tasks]}

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")


# -- reading ----------------------------------------------------------------------------------
class _Fields:
    """Typed access to one JSON object; every failure names the file and the field path."""

    def __init__(self, path: str, where: str, value: Any, allowed: Sequence[str]):
        self.path, self.where = path, where
        if not isinstance(value, dict):
            raise self.fail(where, "an object", value)
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise NetsurgeryError(f"{path}: not a valid heads file: {where or 'top level'}: "
                                  f"unknown key {_short(unknown[0])} (expected "
                                  f"{', '.join(allowed)})")
        self.value = value

    def fail(self, where: str, expected: str, got: Any) -> NetsurgeryError:
        return NetsurgeryError(f"{self.path}: not a valid heads file: {where or 'top level'}: "
                               f"expected {expected}, got {_describe(got)}")

    def _get(self, key: str, optional: bool = False) -> Any:
        if key not in self.value:
            if optional:
                return None
            raise NetsurgeryError(f"{self.path}: not a valid heads file: "
                                  f"{self._name(key)}: missing")
        return self.value[key]

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def int(self, key: str, minimum: int = 0, maximum: int = _INT32,
            optional: bool = False) -> int | None:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if type(v) is not int or not minimum <= v <= maximum:
            raise self.fail(self._name(key), f"an integer in {minimum}..{maximum}", v)
        return v

    def str(self, key: str, optional: bool = False) -> str | None:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            raise self.fail(self._name(key), "a non-empty string", v)
        return v

    def fraction(self, key: str) -> float:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise self.fail(self._name(key), "a number in 0..1", v)
        return float(v)

    def ints(self, key: str, length: int | None = None, optional: bool = False,
             maximum: int = _INT32) -> list[int] | None:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        ok = isinstance(v, list) and all(type(x) is int and 0 <= x <= maximum for x in v)
        if not ok or (length is not None and len(v) != length):
            what = f"{length} integers" if length else "a list of integers"
            raise self.fail(self._name(key), f"{what} in 0..{maximum}", v)
        return list(v)

    def strs(self, key: str, optional: bool = False) -> list[str] | None:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(self._name(key), "a list of strings", v)
        return list(v)

    def obj(self, key: str, allowed: Sequence[str]) -> "_Fields":
        return _Fields(self.path, self._name(key), self._get(key), allowed)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _short(key: str) -> str:
    return _clip(repr(key))


def _describe(value: Any) -> str:
    """A JSON value as a message shows it (containers by size: they may be nested deeply)."""
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, list):
        flat = all(isinstance(v, (int, float, str)) for v in value)
        return f"a list {_clip(repr(value))}" if flat else f"a list of {len(value)} items"
    if value is None:
        return "null"
    kind = "true/false" if isinstance(value, bool) else type(value).__name__
    return f"{kind} {_clip(repr(value))}"


_BASE_KEYS = ("name", "classes", "class_names", "tail", "yolo_layers", "class_map")
_TASK_KEYS = _BASE_KEYS + ("share_until", "route", "header", "trunk_cfg", "gate")
_HEADER_KEYS = ("major", "minor", "revision", "seen")


def _group(f: _Fields, task: bool) -> HeadGroup:
    header = trunk = None
    if task:
        h = f.obj("header", _HEADER_KEYS)
        header = WeightsHeader(h.int("major"), h.int("minor"), h.int("revision"),
                               h.int("seen", maximum=2**64 - 1))
        trunk = f.str("trunk_cfg")
    return HeadGroup(
        name=f.str("name"), yolo_layers=f.ints("yolo_layers"), classes=f.int("classes", 1),
        class_names=f.strs("class_names"), tail=f.ints("tail", 2),
        share_until=f.int("share_until") if task else None,
        route=f.int("route") if task else None, class_map=f.ints("class_map", optional=True),
        header=header, trunk_cfg=trunk, gate=_gate(f) if task else None)


def _gate(f: _Fields) -> Gate | None:
    if f.value.get("gate") is None:
        return None
    g = f.obj("gate", GATE_KEYS)
    counts = {k: g.int(k) for k in ("at", "hidden", "positives", "held_out_positives",
                                    "held_out_negatives")}
    rates = {k: g.fraction(k) for k in ("threshold", "recall", "confidence",
                                        "recall_lower_bound", "positive_pass_rate",
                                        "negative_pass_rate")}
    return Gate(layers=g.ints("layers", 2), **counts, **rates)


def parse_heads(data: Any, path: str = "<heads>") -> MergedHeads:
    """A :class:`MergedHeads` from decoded JSON, every field's type and the file's internal
    consistency checked (a NetsurgeryError naming the first bad field)."""
    if isinstance(data, dict) and data.get("format") == LEGACY_FORMAT:
        data = _upgrade_legacy(data, path)
    top = _Fields(path, "", data, ("schema", "common_classes", "base", "tasks"))
    schema = top.value.get("schema")
    if schema != HEADS_SCHEMA:
        raise top.fail("schema", f"'{HEADS_SCHEMA}' (a heads file written by netsurgery "
                                 "merge)", schema)
    tasks = top._get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise top.fail("tasks", "a non-empty list of heads", tasks)
    heads = MergedHeads(
        _group(top.obj("base", _BASE_KEYS), task=False),
        [_group(_Fields(path, f"tasks[{i}]", t, _TASK_KEYS), task=True)
         for i, t in enumerate(tasks)],
        top.strs("common_classes", optional=True), path)
    _check_consistent(heads, path)
    return heads


def _check_consistent(heads: MergedHeads, path: str) -> None:
    """What the file must satisfy on its own: contiguous layer ranges, one name and one class
    count per head, class maps into the common list."""
    def bad(message: str) -> NetsurgeryError:
        return NetsurgeryError(f"{path}: not a valid heads file: {message}")

    names = [g.name for g in heads.groups()]
    if len(set(names)) != len(names):
        raise bad(f"head names must be unique, got {names}")
    if heads.base.tail[0] != 0:
        raise bad(f"base.tail starts at {heads.base.tail[0]}: expected 0")
    end = heads.base.tail[1]
    for i, g in enumerate(heads.groups()):
        where = "base" if g.is_base else f"tasks[{i - 1}]"
        first, last = g.tail
        if not g.is_base:
            if g.route != end + 1:
                raise bad(f"{where}.route is {g.route}: expected {end + 1}, the layer after "
                          "the previous head")
            if first != g.route + 1:
                raise bad(f"{where}.tail starts at {first}: expected {g.route + 1}, after "
                          "its route")
            if g.share_until > heads.base.tail[1]:
                raise bad(f"{where}.share_until is {g.share_until}: expected a layer of the "
                          f"base 0..{heads.base.tail[1]}")
        if last < first:
            raise bad(f"{where}.tail [{first}, {last}]: expected first ≤ last")
        end = last
        if g.yolo_layers != sorted(set(g.yolo_layers)) or not g.yolo_layers or \
                not all(first <= y <= last for y in g.yolo_layers):
            raise bad(f"{where}.yolo_layers {g.yolo_layers}: expected increasing layer "
                      f"indices in its tail {first}..{last}")
        if len(g.class_names) != g.classes:
            raise bad(f"{where}.class_names: {len(g.class_names)} names for classes="
                      f"{g.classes}")
        _check_class_map(g, where, heads.common_classes, bad)
        if g.trunk_cfg is not None:
            try:
                trunk = parse_cfg_text(g.trunk_cfg, f"{where}.trunk_cfg")
            except CfgError as exc:
                raise bad(f"{where}.trunk_cfg: expected the task's [net] and layers 0.."
                          f"{g.share_until} as cfg text ({exc})") from None
            if len(trunk.layers) not in (0, g.share_until + 1):  # 0: format 1 ([net] only)
                raise bad(f"{where}.trunk_cfg: {len(trunk.layers)} layers, expected the task's "
                          f"layers 0..{g.share_until}")
    _check_gate_ranges(heads, bad)


def _check_gate_ranges(heads: MergedHeads, bad) -> None:
    """Gates follow the last tail, one after the other, each reading a base layer."""
    end = heads.groups()[-1].tail[1]
    for i, g in enumerate(heads.tasks):
        if g.gate is None:
            continue
        first, last = g.gate.layers
        if first != end + 1 or last != first + GATE_LAYERS - 1:
            raise bad(f"tasks[{i}].gate.layers [{first}, {last}]: expected [{end + 1}, "
                      f"{end + GATE_LAYERS}], the {GATE_LAYERS} layers after the previous ones")
        if g.gate.at > heads.base.tail[1]:
            raise bad(f"tasks[{i}].gate.at is {g.gate.at}: expected a layer of the base "
                      f"0..{heads.base.tail[1]}")
        end = last


def _check_class_map(g: HeadGroup, where: str, common: list[str] | None, bad) -> None:
    if common is None:
        if g.class_map is not None:
            raise bad(f"{where}.class_map without common_classes")
        return
    if len(set(common)) != len(common):
        raise bad("common_classes: expected each name once")
    if g.class_map is None or len(g.class_map) != g.classes or \
            len(set(g.class_map)) != g.classes or max(g.class_map) >= len(common):
        raise bad(f"{where}.class_map: expected {g.classes} different indices into "
                  f"common_classes (0..{len(common) - 1})")
    for j, u in enumerate(g.class_map):
        if common[u] != g.class_names[j]:
            raise bad(f"{where}.class_map[{j}] = {u}: common_classes[{u}] is "
                      f"'{common[u]}', not the head's class '{g.class_names[j]}'")


def load_heads(path: str | os.PathLike, network: Network | None = None) -> MergedHeads:
    """Read and check ``OUT.heads.json``; with ``network``, also check that the file describes
    that network (:func:`check_heads`). Every problem is a NetsurgeryError naming the file."""
    p = Path(path)
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise NetsurgeryError(f"{p}: is a folder, expected a heads file (OUT.heads.json)")
        if not stat.S_ISREG(st.st_mode):
            raise NetsurgeryError(f"{p}: not a regular file, expected a heads file")
        if st.st_size > MAX_HEADS_FILE:
            raise NetsurgeryError(f"{p}: {st.st_size:,} bytes, expected a heads file of at "
                                  f"most {MAX_HEADS_FILE:,} bytes")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise NetsurgeryError(f"{p}: file not found") from None
    except OSError as exc:
        raise NetsurgeryError(f"{p}: cannot read ({exc.strerror or exc}), expected a heads "
                              "file") from None
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise NetsurgeryError(f"{p}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise NetsurgeryError(f"{p}: not valid JSON ({exc})") from None
    except RecursionError:
        raise NetsurgeryError(f"{p}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # NaN / Infinity
        raise NetsurgeryError(f"{p}: not valid JSON ({exc})") from None
    heads = parse_heads(data, str(p))
    if network is not None:
        check_heads(heads, network)
    return heads


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


# -- against a network ---------------------------------------------------------------------
def detection_layers(network: Network) -> list[int]:
    """The detection layers a head may own (the specs that declare ``is_detection``)."""
    return network.heads()


def check_heads(heads: MergedHeads, network: Network) -> None:
    """Raise a NetsurgeryError naming the first place where ``heads`` does not describe
    ``network``: its layer count, each task's ``[route] layers=share_until``, the layers each
    tail reads, each head's detection layers and their class counts."""
    def bad(message: str) -> NetsurgeryError:
        return NetsurgeryError(f"{heads.path or 'heads file'}: does not describe the network "
                               f"{network.path or ''}: {message} (was it written by merge "
                               "for this network?)")

    n = len(network.layers)
    if heads.n_layers != n:
        raise bad(f"its heads end at layer {heads.n_layers - 1}, the network has {n} layers")
    detections = set(detection_layers(network))
    for g in heads.groups():
        first, last = g.tail
        if not g.is_base:
            route = network.layers[g.route]
            if route.type_name != "route" or route.sources() != [g.share_until]:
                raise bad(f"head '{g.name}': layer {g.route} is [{route.section.header}] "
                          f"reading {route.inputs()}, expected [route] layers="
                          f"{g.share_until}")
            for spec in network.layers[first:last + 1]:  # base layers read only earlier ones
                outside = [i for i in spec.inputs() + spec.references()
                           if not (g.route <= i <= last or 0 <= i <= g.share_until)]
                if outside:
                    raise bad(f"head '{g.name}': layer {spec.index} reads layer {outside[0]}, "
                              f"outside its trunk 0..{g.share_until} and tail {first}..{last}")
        if not g.is_base:
            _check_trunk_cfg(g, network, bad)
        own = sorted(d for d in detections if first <= d <= last)
        if own != g.yolo_layers:
            raise bad(f"head '{g.name}': detection layers {own} in its layers {first}..{last}, "
                      f"the heads file says {g.yolo_layers}")
        if g.gate is not None:
            _check_gate_layers(g, network, bad)
        expected = len(heads.common_classes) if heads.common_classes is not None else g.classes
        for y in g.yolo_layers:
            got = getattr(network.layers[y], "classes", None)
            if got != expected:
                raise bad(f"head '{g.name}': layer {y} has classes={got}, the heads file "
                          f"says {expected}")


def _check_gate_layers(g: HeadGroup, network: Network, bad) -> None:
    first, last = g.gate.layers
    route, score = network.layers[first], network.layers[last]
    if route.type_name != "route" or route.sources() != [g.gate.at]:
        raise bad(f"head '{g.name}': gate layer {first} is [{route.section.header}], expected "
                  f"[route] layers={g.gate.at}")
    if score.out_shape.as_list() != [1, 1, 1]:
        raise bad(f"head '{g.name}': gate score layer {last} outputs "
                  f"{score.out_shape.as_list()}, expected one value [1, 1, 1]")


def _check_trunk_cfg(g: HeadGroup, network: Network, bad) -> None:
    """The task's own trunk text must describe the merged network's trunk 0..k."""
    from netsurgery.analysis.cost import spec_difference

    trunk = parse_cfg_text(g.trunk_cfg, "trunk_cfg")
    if not trunk.layers:
        return  # format 1: only the [net] section was kept
    try:
        # at the network's input size: detect/eval may run it at another one (--size)
        own = build_network(trunk, (network.net.width, network.net.height))
    except CfgError as exc:
        raise bad(f"head '{g.name}': its trunk_cfg does not build ({exc.message})") from None
    for spec in own.layers:
        difference = spec_difference(network.layers[spec.index], spec)
        if difference is not None:
            raise bad(f"head '{g.name}': trunk layer {spec.index} differs from the "
                      f"network's ({difference})")


# -- format 1 (netsurgery before the format had a version) -------------------------------------
def _upgrade_legacy(data: dict, path: str) -> dict:
    """A ``netsurgery-heads/1`` file as format 2: class names were files named by a path
    relative to the folder merge ran in; they are looked up relative to the heads file, then
    to the working directory (failing both, the message says how to write a format 2 file).
    Anything malformed is passed on for :func:`parse_heads` to name."""
    tasks = data.get("tasks")
    out = {"schema": HEADS_SCHEMA, "common_classes": data.get("common_classes"),
           "base": data.get("base"), "tasks": tasks}
    wheres = [("base", "base", None)]
    if isinstance(tasks, list):
        wheres += [(f"tasks[{i}]", "tasks", i) for i in range(len(tasks))]
    for where, key, i in wheres:
        group = out[key] if i is None else out[key][i]
        if not isinstance(group, dict):
            continue
        keys = _BASE_KEYS if i is None else _TASK_KEYS
        new = {k: v for k, v in group.items() if k in keys}
        if i is not None and "net" in group:  # format 1 kept only the task's [net]
            new["trunk_cfg"] = group["net"]
        classes = group.get("classes")
        if group.get("class_names") is None and type(classes) is int and 1 <= classes:
            names_file = group.get("names_file")
            new["class_names"] = (
                _legacy_names(path, where, names_file, classes)[:classes]
                if isinstance(names_file, str) and names_file
                else [f"{group.get('name')}:{j}" for j in range(classes)])
        if i is None:
            out["base"] = new
        else:
            out["tasks"] = [*out["tasks"][:i], new, *out["tasks"][i + 1:]]
    return out


def _legacy_names(path: str, where: str, names_file: str, classes: int) -> list[str]:
    from netsurgery.training.data import load_names

    candidates = [Path(path).parent / names_file, Path(names_file)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise NetsurgeryError(
            f"{path}: heads file of format {LEGACY_FORMAT} names the classes of {where} by "
            f"the file '{names_file}', found neither beside the heads file nor in the "
            "working directory: run netsurgery merge again (format 2 holds the names), or "
            "run from the folder merge ran in")
    names = load_names(found)
    if len(names) < classes:
        raise NetsurgeryError(f"{found}: {len(names)} names for {where} of {path} with "
                              f"classes={classes}")
    return names


# -- files for stock Darknet and OpenCV ---------------------------------------------------------
def names_text(heads: MergedHeads) -> str:
    """``OUT.names``: the common class list with ``--common-classes`` (every head decodes with
    it), else the base head's names (stock Darknet decodes every [yolo] layer with the first
    one's class count, so only the base head reads right there)."""
    names = heads.common_classes if heads.common_classes is not None else heads.base.class_names
    return "".join(f"{n}\n" for n in names)


def data_text(heads: MergedHeads, names_path: str | os.PathLike) -> str:
    """``OUT.data`` for ``darknet detector test`` (with ``--common-classes`` only: one class
    list for all heads)."""
    if heads.common_classes is None:
        raise UsageError("OUT.data needs one class list for every head: merge with "
                         "--common-classes")
    return (f"# written by netsurgery merge: one class list for all heads; names= is read "
            f"relative to the folder Darknet runs in\nclasses={len(heads.common_classes)}\n"
            f"names={Path(names_path).name}\n")


__all__ = ["HEADS_SCHEMA", "HeadGroup", "MergedHeads", "check_heads", "data_text",
           "detection_layers", "load_heads", "names_text", "parse_heads"]
