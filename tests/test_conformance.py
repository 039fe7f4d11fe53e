"""Every layer Darknet dumped in ../shared/conformance/ (or tests/data/) is reproduced within
2e-5 × max(1, max |layer|), through the API (exact and BatchNorm-folded inference mode) and
through ``netsurgery dump`` (``--exact`` and ``--fast``)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import data_path

from netsurgery import load_model
from netsurgery.cli.app import run

SMALL_CASES = ["cov-cls-64", "cov-det-96", "yolov4-tiny-160"]
BIG_CASE = "yolov3-tiny-coco"  # 416×416 real COCO weights: ~1 s per run, so two runs only
REL_TOL = 2e-5


def case_files(case: str) -> dict:
    folder = data_path("conformance", case)
    return {"cfg": folder / "net.cfg", "weights": data_path("conformance", case, "net.weights"),
            "input": folder / "input.npy", "layers": folder / "layers.npz",
            "meta": json.loads((folder / "meta.json").read_text())}


def max_rel_errors(ours: dict[int, np.ndarray], reference) -> dict[int, float]:
    """Per stored layer that we computed: max |ours − Darknet| / max(1, max |Darknet|)."""
    errors = {}
    for key in reference.files:
        if key == "input":
            continue
        index = int(key.removeprefix("layer_"))
        if index not in ours:
            continue  # assert_conforms checks that every stored layer was compared
        ref = reference[key]
        got = np.asarray(ours[index]).reshape(ref.shape)
        errors[index] = float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))
    return errors


def assert_conforms(errors: dict[int, float], meta: dict) -> None:
    stored = meta.get("dumped_layers_only") or list(range(meta["net"]["n_layers"]))
    assert sorted(errors) == sorted(stored), "not every stored layer was compared"
    bad = {i: e for i, e in errors.items() if not e <= REL_TOL}
    assert not bad, f"layers beyond {REL_TOL} × max(1, max|layer|): {bad}"


def api_outputs(files: dict, inference: bool) -> dict[int, np.ndarray]:
    model = load_model(files["cfg"], files["weights"], inference=inference)
    x = torch.from_numpy(np.load(files["input"]))
    with torch.no_grad():
        outs = model.layer_outputs(x)
    assert len(outs) == files["meta"]["net"]["n_layers"]
    return {i: o[0].numpy() for i, o in enumerate(outs)}


@pytest.mark.parametrize("inference", [False, True], ids=["exact", "inference"])
@pytest.mark.parametrize("case", SMALL_CASES)
def test_api_matches_darknet(case, inference):
    files = case_files(case)
    errors = max_rel_errors(api_outputs(files, inference), np.load(files["layers"]))
    assert_conforms(errors, files["meta"])


@pytest.mark.slow
def test_api_matches_darknet_real_yolov3_tiny():
    files = case_files(BIG_CASE)
    errors = max_rel_errors(api_outputs(files, inference=False), np.load(files["layers"]))
    assert_conforms(errors, files["meta"])


def cli_dump(files: dict, tmp_path, mode: str) -> dict:
    out = tmp_path / f"dump{mode}.npz"
    rc = run(["dump", str(files["cfg"]), str(files["weights"]), "--input", str(files["input"]),
              "--out", str(out), mode])
    assert rc == 0
    return np.load(out)


@pytest.mark.parametrize("mode", ["--exact", "--fast"])
@pytest.mark.parametrize("case", SMALL_CASES)
def test_cli_dump_matches_darknet(case, mode, tmp_path, capsys):
    files = case_files(case)
    dumped = cli_dump(files, tmp_path, mode)
    n = files["meta"]["net"]["n_layers"]
    assert sorted(dumped.files) == ["input"] + [f"layer_{i:03d}" for i in range(n)]
    np.testing.assert_array_equal(dumped["input"], np.load(files["input"]))
    ours = {int(k[6:]): dumped[k] for k in dumped.files if k != "input"}
    assert_conforms(max_rel_errors(ours, np.load(files["layers"])), files["meta"])
    assert f"wrote {n} layer outputs" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_dump_fast_matches_darknet_real_yolov3_tiny(tmp_path):
    files = case_files(BIG_CASE)
    dumped = cli_dump(files, tmp_path, "--fast")
    ours = {int(k[6:]): dumped[k] for k in dumped.files if k != "input"}
    assert_conforms(max_rel_errors(ours, np.load(files["layers"])), files["meta"])


def test_dump_of_an_image_reproduces_darknets_letterbox_input(tmp_path):
    """yolov4-tiny-160 was run by Darknet on chelsea.png letterboxed: `dump --letterbox` on
    the image feeds the same floats and gives the same [yolo] outputs."""
    files = case_files("yolov4-tiny-160")
    image = data_path("images", "chelsea.png")
    out = tmp_path / "img.npz"
    rc = run(["dump", str(files["cfg"]), str(files["weights"]), "--input", str(image),
              "--letterbox", "--layers", "30,37", "--out", str(out)])
    assert rc == 0
    dumped = np.load(out)
    assert sorted(dumped.files) == ["input", "layer_030", "layer_037"]
    np.testing.assert_array_equal(dumped["input"], np.load(files["input"]))
    errors = max_rel_errors({30: dumped["layer_030"], 37: dumped["layer_037"]},
                            np.load(files["layers"]))
    assert max(errors[30], errors[37]) <= REL_TOL
