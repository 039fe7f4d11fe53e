"""Every JSON output has one shape whatever the number of heads or tasks, a versioned
``"schema"`` name, and a JSON Schema in docs/schemas/ that real outputs satisfy (issue 21)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_heads import merge_in, run_quiet, write_networks

from netsurgery.analysis.sweep import SweepPoint, write_outputs
from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import layer_arrays, load_weights, save_weights
from netsurgery.jsonout import VERSIONS, schema_name
from netsurgery.training.synth import make_shapes_dataset

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def check(path: Path, kind: str) -> dict:
    data = json.loads(Path(path).read_text())
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema)
    assert data["schema"] == schema_name(kind) == schema["$id"]
    return data


def test_every_kind_has_its_schema_file():
    assert {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")} == \
        set(VERSIONS) | {"heads"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A merged network of two heads (pets: 2 classes, shapes: 3) and a dataset per head."""
    work = tmp_path_factory.mktemp("json")
    write_networks(work)
    merge_in(work)
    make_shapes_dataset(work / "shapes", 12, seed=1, size=(64, 64))
    make_shapes_dataset(work / "pets", 12, seed=2, size=(64, 64), classes=("circle", "square"))
    return work


def test_info_one_network_and_merged(tiny, yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    rc, _, err = run_quiet(["info", cfg, "--weights", weights, "--share-until", "8,12",
                            "--json", tmp_path / "a.json"])
    assert rc == 0, err
    data = check(tmp_path / "a.json", "info")
    assert [s["k"] for s in data["share"]] == [8, 12] and data["weights"]["complete"]
    rc, _, err = run_quiet(["info", tiny / "merged.cfg", "--heads", tiny / "merged.heads.json",
                            "--json", tmp_path / "b.json"])
    assert rc == 0, err
    assert [h["name"] for h in check(tmp_path / "b.json", "info")["merge"]["heads"]] == \
        ["pets", "shapes"]


def test_eval_has_one_shape_for_one_and_two_heads(tiny, tmp_path):
    rc, _, err = run_quiet(["eval", tiny / "task.cfg", tiny / "task.weights", "--data",
                            tiny / "shapes" / "shapes.data", "--json", tmp_path / "one.json"])
    assert rc == 0, err
    one = check(tmp_path / "one.json", "eval")
    rc, _, err = run_quiet(["eval", tiny / "merged.cfg", tiny / "merged.weights", "--heads",
                            tiny / "merged.heads.json",
                            "--data", f"shapes={tiny / 'shapes' / 'shapes.data'}",
                            "--data", f"pets={tiny / 'pets' / 'shapes.data'}",
                            "--json", tmp_path / "two.json"])
    assert rc == 0, err
    two = check(tmp_path / "two.json", "eval")
    assert list(one["heads"]) == ["model"] and sorted(two["heads"]) == ["pets", "shapes"]
    # the task alone and the task's head of the merged network score the same
    assert two["heads"]["shapes"]["map"] == one["heads"]["model"]["map"]


def test_detect_plain_and_merged(tiny, tmp_path):
    images = [str(p) for p in sorted((tiny / "shapes" / "images" / "valid").glob("*.jpg"))]
    rc, _, err = run_quiet(["detect", tiny / "task.cfg", tiny / "task.weights", *images,
                            "--thresh", "0.05", "--json", tmp_path / "one.json"])
    assert rc == 0, err
    assert check(tmp_path / "one.json", "detect")["processed"] == len(images)
    rc, _, err = run_quiet(["detect", tiny / "merged.cfg", tiny / "merged.weights", *images,
                            "--heads", tiny / "merged.heads.json", "--thresh", "0.05",
                            "--json", tmp_path / "two.json"])
    assert rc == 0, err
    heads = {r["head"] for r in check(tmp_path / "two.json", "detect")["detections"]}
    assert heads <= {"pets", "shapes"} and heads


def test_diff_has_one_shape_for_one_and_two_tasks(yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    network = build_network(cfg)
    arrays = {i: {k: np.array(v) for k, v in a.items()}
              for i, a in layer_arrays(load_weights(weights, network.layers)).items()}
    arrays[13]["biases"] += 0.5
    save_weights(tmp_path / "task.weights", load_weights(weights, network.layers).header,
                 network.layers, arrays)
    shutil.copy(weights, tmp_path / "same.weights")
    for n, tasks in ((1, ["task"]), (2, ["task", "same"])):
        rc, _, err = run_quiet(["diff", weights, *(tmp_path / f"{t}.weights" for t in tasks),
                                "--cfg", cfg, "--json", tmp_path / f"d{n}.json"])
        assert rc == 0, err
        data = check(tmp_path / f"d{n}.json", "diff")
        assert len(data["tasks"]) == n
        assert data["tasks"][0]["summary"]["first_changed"] == 13


def test_sweep_json(tmp_path):
    points = [SweepPoint(8, 0.5, 0.6, 0.04, 0.31, 394096, 1.75, 30.0, 40.0, 30, "w8",
                         [29.0, 31.0], [39.0, 41.0], 20),
              SweepPoint(-1, 0.7, 0.7, 0.0, 0.0, 0, 0.0, None, None, 30, "we")]
    write_outputs(points, tmp_path)
    assert [p["k"] for p in check(tmp_path / "sweep.json", "sweep")["points"]] == [8, -1]


def test_heads_file_kind_is_versioned_the_same_way():
    from netsurgery.surgery.heads import HEADS_SCHEMA

    schema = json.loads((SCHEMAS / "heads.schema.json").read_text())
    assert HEADS_SCHEMA.startswith("netsurgery.heads/") and \
        schema["properties"]["schema"]["const"] == HEADS_SCHEMA
