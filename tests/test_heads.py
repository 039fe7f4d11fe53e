"""The heads file (format netsurgery.heads/2): a merged network is a self-contained artifact
(moved to another folder it works from any working directory with every verb), every reader
checks the file against its network, old files still load, the JSON Schema describes what
merge writes, and a corrupted heads file never gives exit 0 with other figures nor an
internal error."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis_profiles import FUZZ

from netsurgery.cli.app import run
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import WeightsHeader, random_arrays, save_weights
from netsurgery.errors import NetsurgeryError
from netsurgery.surgery.heads import HEADS_SCHEMA, load_heads, parse_heads
from netsurgery.training.synth import make_shapes_dataset

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "schemas" / "heads.schema.json"

NET = "[net]\nwidth=64\nheight=64\nchannels=3\n"
TRUNK = """
[convolutional]
filters=8
size=3
stride=2
pad=1
batch_normalize=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=16
size=3
pad=1
batch_normalize=1
activation=leaky
"""
HEAD = """
[convolutional]
filters={filters}
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=6,6,12,12,24,24
num=3
classes={classes}
"""
TASK_NAMES = ["circle", "square", "triangle"]  # the shapes dataset's classes
BASE_NAMES = ["cat", "dog"]


def _cfg(classes: int) -> str:
    return NET + TRUNK + HEAD.format(filters=3 * (classes + 5), classes=classes)


def run_quiet(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def write_networks(folder: Path) -> dict[str, Path]:
    """Base (2 classes) and task (3 classes) sharing layers 0..2 bit for bit; random
    weights."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, classes, seed, names in (("base", 2, 1, BASE_NAMES), ("task", 3, 2, TASK_NAMES)):
        cfg = folder / f"{name}.cfg"
        cfg.write_text(_cfg(classes))
        layers = build_network(cfg).layers
        arrays = random_arrays(layers, seed=1)  # the trunk: same seed
        arrays[3] = random_arrays(layers, seed=seed)[3]
        save_weights(folder / f"{name}.weights", WeightsHeader(0, 2, 5, 1000 * seed), layers,
                     arrays)
        (folder / f"{name}.names").write_text("\n".join(names) + "\n")
        files[name] = cfg
    return files


def merge_in(folder: Path, out: str = "merged", *extra: str) -> None:
    rc, _, err = run_quiet(["merge", "--base", folder / "base.cfg", folder / "base.weights",
                            "--task", f"shapes={folder / 'task.cfg'}:{folder / 'task.weights'}",
                            "--share-until", "2", "--base-name", "pets",
                            "--names", f"pets={folder / 'base.names'}",
                            "--names", f"shapes={folder / 'task.names'}", "-o", folder / out,
                            *extra])
    assert rc == 0, err


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> Path:
    """Merged files written in one folder, copied to another; the first folder is gone."""
    work = tmp_path_factory.mktemp("merge_here")
    write_networks(work)
    merge_in(work)
    target = tmp_path_factory.mktemp("moved")
    for name in ("merged.cfg", "merged.weights", "merged.heads.json", "merged.names",
                 "task.weights"):
        shutil.copy(work / name, target / name)
    shutil.rmtree(work)
    return target


def test_moved_merged_files_work_from_any_folder(moved, tmp_path, monkeypatch):
    data = make_shapes_dataset(tmp_path / "shapes", 5, seed=3, size=(64, 64))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg, weights, heads = (moved / f"merged.{s}" for s in ("cfg", "weights", "heads.json"))

    rc, out, err = run_quiet(["info", cfg, "--heads", heads])
    assert rc == 0, err
    assert "pets" in out and "shapes" in out and "merged / separate" in out

    rc, out, err = run_quiet(["time", cfg, weights, "--heads", heads, "--repeat", "1"])
    assert rc == 0, err
    assert "pets alone" in out and "shapes alone" in out

    image = data.valid_images[0]
    rc, out, err = run_quiet(["detect", cfg, weights, image, "--heads", heads, "--thresh", "0",
                              "--json", elsewhere / "d.json"])
    assert rc == 0, err
    found = json.loads((elsewhere / "d.json").read_text())
    labels = {d["head"]: set() for d in _records(found)}
    for d in _records(found):
        labels[d["head"]].add(d["class_name"])
    # the class names come from the heads file itself: no names file was given
    assert labels["pets"] <= set(BASE_NAMES) and labels["shapes"] <= set(TASK_NAMES)
    assert labels["pets"] and labels["shapes"]

    rc, out, err = run_quiet(["detect", cfg, weights, image, "--heads", heads, "--size",
                              "96,96"])  # the heads file holds for the network at any size
    assert rc == 0, err

    rc, out, err = run_quiet(["eval", cfg, weights, "--heads", heads,
                              "--data", f"shapes={data.data}"])
    assert rc == 0, err
    assert "== head shapes" in out

    rc, out, err = run_quiet(["split", cfg, weights, "--heads", heads, "--task", "shapes",
                              "-o", elsewhere / "shapes"])
    assert rc == 0, err
    assert (elsewhere / "shapes.weights").read_bytes() == (moved / "task.weights").read_bytes()
    assert (moved / "merged.names").read_text() == "cat\ndog\n"


def _records(found) -> list[dict]:
    """Detection records from detect --json, whatever its nesting."""
    if isinstance(found, dict):
        if "class_name" in found and "head" in found:
            return [found]
        return [r for v in found.values() for r in _records(v)]
    if isinstance(found, list):
        return [r for v in found for r in _records(v)]
    return []


def test_heads_files_match_the_json_schema(moved, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    write_networks(tmp_path)
    merge_in(tmp_path, "common", "--common-classes")
    for path in (moved / "merged.heads.json", tmp_path / "common.heads.json"):
        data = json.loads(path.read_text())
        assert data["schema"] == HEADS_SCHEMA
        jsonschema.validate(data, schema)
    data = json.loads((tmp_path / "common.heads.json").read_text())
    assert data["common_classes"] == BASE_NAMES + TASK_NAMES
    assert data["tasks"][0]["class_map"] == [2, 3, 4]
    assert (tmp_path / "common.names").read_text() == "cat\ndog\ncircle\nsquare\ntriangle\n"
    data_file = (tmp_path / "common.data").read_text().splitlines()
    assert "classes=5" in data_file and "names=common.names" in data_file
    bad = json.loads((moved / "merged.heads.json").read_text())
    bad["tasks"][0]["tail"] = [1]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_heads_file_of_another_network_is_refused_by_every_reader(moved, tmp_path):
    write_networks(tmp_path)
    heads = moved / "merged.heads.json"
    other_cfg, other_weights = tmp_path / "base.cfg", tmp_path / "base.weights"
    for argv in (["info", other_cfg, "--heads", heads],
                 ["time", other_cfg, other_weights, "--heads", heads, "--repeat", "1"],
                 ["detect", other_cfg, other_weights, tmp_path / "none.png", "--heads", heads],
                 ["split", other_cfg, other_weights, "--heads", heads, "--task", "shapes",
                  "-o", tmp_path / "x"]):
        rc, out, err = run_quiet(argv)
        assert rc == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1
        assert "does not describe the network" in err and "heads end at layer 7, the network has 5 layers" in err


def test_old_heads_file_loads_when_its_names_files_are_found(moved, tmp_path, monkeypatch):
    data = json.loads((moved / "merged.heads.json").read_text())
    old = {"format": "netsurgery-heads/1", "common_classes": None}
    for key, group in (("base", data["base"]), ("tasks", data["tasks"][0])):
        group = dict(group)
        group.pop("class_names")
        group.setdefault("share_until", None)
        group.setdefault("route", None)
        group.update(names_file=f"names/{key}.names", class_names=None)
        if key == "tasks":  # format 1 kept the task's [net] section only
            group["net"] = group.pop("trunk_cfg").split("\n[conv")[0] + "\n"
        old[key] = group if key == "base" else [group]
    folder = tmp_path / "old"
    (folder / "names").mkdir(parents=True)
    (folder / "names" / "base.names").write_text("cat\ndog\n")
    (folder / "names" / "tasks.names").write_text("circle\nsquare\ntriangle\n")
    (folder / "m.heads.json").write_text(json.dumps(old))
    monkeypatch.chdir(tmp_path)  # not the heads file's folder: found relative to the file
    heads = load_heads(folder / "m.heads.json", build_network(moved / "merged.cfg"))
    assert heads.base.class_names == BASE_NAMES and heads.tasks[0].class_names == TASK_NAMES
    assert heads.tasks[0].header == WeightsHeader(0, 2, 5, 2000)
    shutil.rmtree(folder / "names")
    with pytest.raises(NetsurgeryError, match="run netsurgery merge again"):
        load_heads(folder / "m.heads.json")


# -- corrupted heads files ----------------------------------------------------------------------
def _paths(value, prefix=()):
    """Every (path, value) inside a JSON value, the root included."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) |
    st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11, -1, 2**31, 2**64]) |
    st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)


NESTED = "<nested>"


@st.composite
def corrupted(draw, original: dict) -> bytes:
    """The heads file with one thing broken: a field replaced, removed or added, or the whole
    file replaced by text, bytes or deep nesting."""
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "text",
                                 "bytes", "nested", "truncate"]))
    text = json.dumps(original, indent=1)
    if kind == "text":
        return draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    if kind == "nested":
        depth = draw(st.sampled_from([50, 5000, 200000]))
        return ("[" * depth + "]" * depth).encode()
    if kind == "truncate":
        return text.encode()[:draw(st.integers(0, len(text) - 1))]
    data = json.loads(text)
    paths = [p for p, _ in _paths(data) if p]
    path = draw(st.sampled_from(paths))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    nested = kind == "replace" and draw(st.integers(0, 3)) == 0  # deep nesting in a field
    if kind == "replace":
        parent[path[-1]] = NESTED if nested else draw(JSON_VALUES)
    elif kind == "delete":
        del parent[path[-1]]
    else:
        target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
        if isinstance(target, dict):
            target[draw(st.text(min_size=1, max_size=6))] = draw(JSON_VALUES)
        else:
            target.append(draw(JSON_VALUES))
    return json.dumps(data).replace(f'"{NESTED}"', "[" * 3000 + "]" * 3000).encode()


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    write_networks(folder)
    merge_in(folder)
    heads = folder / "merged.heads.json"
    original = json.loads(heads.read_text())
    rc, info_out, _ = run_quiet(["info", folder / "merged.cfg", "--heads", heads])
    assert rc == 0
    return folder, original, info_out


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
@example(data=None)
def test_a_corrupted_heads_file_gives_exit_2_or_the_same_figures(fuzz_files, data):
    folder, original, info_out = fuzz_files
    heads = folder / "fuzzed.heads.json"
    if data is None:  # the classic: share_until edited by hand
        broken = json.loads(json.dumps(original))
        broken["tasks"][0]["share_until"] = 1
        content = json.dumps(broken).encode()
    else:
        content = data.draw(corrupted(original))
    heads.write_bytes(content)
    rc, out, err = run_quiet(["info", folder / "merged.cfg", "--heads", heads])
    assert rc in (0, 2), err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    else:  # a harmless change (a class name, the seen counter): the same figures
        assert out == info_out
    rc, _, err = run_quiet(["split", folder / "merged.cfg", folder / "merged.weights",
                            "--heads", heads, "--task", "shapes", "-o", folder / "split",
                            "--overwrite"])
    assert rc in (0, 2) and "internal error" not in err, err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1, err


def test_parse_heads_names_the_first_bad_field(fuzz_files):
    _, original, _ = fuzz_files
    cases = [
        (("tasks", 0, "tail"), [9], "tasks[0].tail: expected 2 integers in 0..2147483647, "
                                    "got a list [9]"),
        (("base", "classes"), 2.0, "base.classes: expected an integer in 1..2147483647, got "
                                   "float 2.0"),
        (("tasks", 0, "route"), True, "tasks[0].route: expected an integer in 0..2147483647, "
                                      "got true/false True"),
        (("tasks", 0, "route"), 6, "tasks[0].route is 6: expected 5, the layer after the "
                                   "previous head"),
        (("base", "class_names"), ["cat"], "base.class_names: 1 names for classes=2"),
        (("tasks", 0, "header"), {"major": 0}, "tasks[0].header.minor: missing"),
        (("tasks", 0, "trunk_cfg"), "[convolutional]\n", "tasks[0].trunk_cfg: expected the "
                                                         "task's [net] and layers 0..2"),
        (("tasks", 0, "nett"), "", "tasks[0]: unknown key 'nett' (expected name, "),
    ]
    for path, value, message in cases:
        broken = json.loads(json.dumps(original))
        parent = broken
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
        with pytest.raises(NetsurgeryError) as info:
            parse_heads(broken, "m.heads.json")
        assert f"m.heads.json: not a valid heads file: {message}" in str(info.value)
        assert "\n" not in str(info.value)


def test_arrays_of_the_fixture_are_what_merge_wrote(fuzz_files):
    """The fuzz fixture's merged network: base 5 layers + route + task tail (2 layers)."""
    folder, original, _ = fuzz_files
    assert original["base"]["tail"] == [0, 4] and original["tasks"][0]["route"] == 5
    assert original["tasks"][0]["tail"] == [6, 7] and original["tasks"][0]["yolo_layers"] == [7]
    assert len(build_network(folder / "merged.cfg").layers) == 8
