"""Gated heads: threshold calibration (Clopper–Pearson) and the gate classifier."""
import json
import math

import numpy as np
import pytest
import torch

from netsurgery.errors import UsageError
from netsurgery.surgery.gates import (calibrate_threshold, clopper_pearson_lower,
                                      minimum_positives, positives_for_misses)
from netsurgery.training.gate import fit_gate, gate_scores


@pytest.mark.parametrize("successes, trials, expected", [
    # scipy.stats.beta.ppf(0.05, x, n - x + 1), computed once by hand
    (9, 10, 0.6058366975634952),
    (95, 100, 0.8977466223567255),
    (290, 300, 0.9441152594854414),
    (1, 20, 0.0025613787765302806),
])
def test_clopper_pearson_matches_the_beta_quantile(successes, trials, expected):
    assert clopper_pearson_lower(successes, trials, 0.95) == pytest.approx(expected, abs=1e-12)


def test_clopper_pearson_edges():
    assert clopper_pearson_lower(0, 10) == 0.0
    assert clopper_pearson_lower(10, 10) == pytest.approx(0.05 ** 0.1)  # (1-c)^(1/n)
    with pytest.raises(ValueError):
        clopper_pearson_lower(11, 10)


def test_minimum_positives():
    # all n pass: bound 0.05^(1/n) ≥ 0.99 first at n = 299 (0.05^(1/298) = 0.98999...)
    assert minimum_positives(0.99) == 299
    assert 0.05 ** (1 / 298) < 0.99 <= 0.05 ** (1 / 299)
    assert minimum_positives(0.9) == 29


def test_positives_for_misses_is_the_fewest_that_keep_the_bound():
    assert positives_for_misses(0, 0.99) == minimum_positives(0.99) == 299
    # docs/gates.md: 704 positives let the threshold leave out 2 (bound 0.9911), 307 none
    for misses, expected in ((1, 473), (2, 628), (3, 773)):
        n = positives_for_misses(misses, 0.99)
        assert n == expected
        assert clopper_pearson_lower(n - misses, n) >= 0.99
        assert clopper_pearson_lower(n - 1 - misses, n - 1) < 0.99
    assert clopper_pearson_lower(702, 704) == pytest.approx(0.99108, abs=1e-5)


def test_calibration_keeps_the_bound_and_is_the_largest_threshold():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 400)
    cal = calibrate_threshold(scores, recall=0.9, confidence=0.95)
    passing = int((scores >= cal.threshold).sum())
    assert passing == cal.passing
    assert clopper_pearson_lower(passing, 400) >= 0.9
    # one step stricter (the next larger score) would break the bound
    stricter = np.min(scores[scores > cal.threshold])
    assert clopper_pearson_lower(int((scores >= stricter).sum()), 400) < 0.9
    # known distribution: with 400 uniform scores and recall 0.9 at 95 %, about 373 pass
    # (the smallest x with the bound ≥ 0.9), so the threshold sits near the 7th percentile
    assert passing == next(x for x in range(400) if clopper_pearson_lower(x, 400) >= 0.9)
    assert 0.04 < cal.threshold < 0.10


def test_calibration_ties_pass_together():
    scores = [0.5] * 50 + [0.9] * 10
    cal = calibrate_threshold(scores, recall=0.9)
    assert cal.threshold == 0.5 and cal.passing == 60


def test_calibration_refuses_too_few_positives():
    with pytest.raises(UsageError, match="needs at least 29"):
        calibrate_threshold(np.linspace(0, 1, 28), recall=0.9)
    with pytest.raises(UsageError, match="--recall"):
        calibrate_threshold([0.5] * 100, recall=1.0)


def test_fit_gate_separates_a_planted_signal():
    """Positives carry a bright spot in channel 3 at a random place; the fitted classifier
    (with its score computed as the Darknet layers compute it) must rank them first."""
    gen = torch.Generator().manual_seed(1)
    n, c, h, w = 200, 8, 6, 6
    features = torch.randn(n, c, h, w, generator=gen) * 0.3
    positive = np.arange(n) % 4 == 0
    for i in np.flatnonzero(positive):
        y, x = int(i * 7 % h), int(i * 5 % w)
        features[i, 3, y, x] += 6.0
    weights = fit_gate(features, positive, hidden=4, epochs=40, seed=0)
    assert weights.hidden_weights.shape == (4, c) and weights.score_weights.shape == (1, 4)
    scores = gate_scores(weights, features)
    auc = (scores[positive][:, None] > scores[~positive][None, :]).mean()
    assert auc > 0.98  # 0.992 measured with these settings
    # the score is the Darknet arithmetic: 1×1 conv, leaky 0.1, global mean, 1×1 conv, logistic
    f = features[0].numpy().reshape(c, -1)
    hidden = weights.hidden_weights @ f + weights.hidden_biases[:, None]
    hidden = np.where(hidden > 0, hidden, 0.1 * hidden).mean(axis=1)
    z = float((weights.score_weights @ hidden + weights.score_bias)[0])
    assert scores[0] == pytest.approx(1 / (1 + math.exp(-z)), rel=1e-5)


# -- end to end on a tiny merged network (the fixture of test_heads: base 2 classes, task 3,
#    sharing layers 0..2 at 64×64, random weights) -------------------------------------------

@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """The tiny merged network gated for its task head at layer 2 on a shapes stream with
    half of the images empty."""
    from test_heads import merge_in, run_quiet, write_networks

    from netsurgery.training.synth import make_shapes_dataset

    work = tmp_path_factory.mktemp("gate")
    write_networks(work)
    merge_in(work)
    paths = make_shapes_dataset(work / "stream", 240, seed=4, size=(64, 64),
                                valid_fraction=0.5, negative_fraction=0.5)
    rc, out, err = run_quiet(["gate", work / "merged.cfg", work / "merged.weights",
                              "--heads", work / "merged.heads.json", "--head", "shapes",
                              "--data", paths.data, "--recall", "0.9", "-o", work / "gated"])
    assert rc == 0, err
    return work, paths, out


def _scores(model, images, layer):
    from netsurgery.detection.image import preprocess

    net = model.network.net
    xs = np.stack([preprocess(p, net.width, net.height, False)[0] for p in images])
    with torch.inference_mode():
        return model.run(torch.from_numpy(xs), [layer])[layer].reshape(-1).numpy()


def test_gate_files_record_a_calibrated_gate(gated):
    """The recorded threshold, bound and held-out pass rates are what the written network's
    own score layer gives on the valid images (even lines calibrate, odd lines measure)."""
    from netsurgery.surgery.heads import load_heads
    from netsurgery.surgery.weighted import load_weighted
    from netsurgery.training.data import label_path

    work, paths, out = gated
    merged = load_weighted(work / "gated.cfg", work / "gated.weights")
    heads = load_heads(work / "gated.heads.json", merged.network)
    gate = heads.group("shapes").gate
    assert gate.at == 2 and gate.layers == [8, 11] and len(merged) == 12
    assert [merged.network.layers[i].type_name for i in range(8, 12)] == \
        ["route", "convolutional", "avgpool", "convolutional"]
    valid = paths.valid_images
    positive = np.array([label_path(p).read_text().strip() != "" for p in valid])
    scores = _scores(merged.model(), valid, gate.score_layer)
    cal_scores, cal_pos = scores[0::2], positive[0::2]
    assert gate.positives == cal_pos.sum() >= minimum_positives(0.9)
    passing = int((cal_scores[cal_pos] >= gate.threshold).sum())
    assert gate.recall_lower_bound == pytest.approx(clopper_pearson_lower(passing, gate.positives))
    assert gate.recall_lower_bound >= 0.9
    held, held_pos = scores[1::2] >= gate.threshold, positive[1::2]
    assert gate.held_out_positives == held_pos.sum()
    assert gate.positive_pass_rate == pytest.approx(held[held_pos].mean())
    assert gate.negative_pass_rate == pytest.approx(held[~held_pos].mean())
    assert "held out: positives pass" in out
    # too few positives to leave 2 out: the report says how many would
    misses = gate.positives - passing
    assert ("the bound let the threshold leave out" in out) == (misses < 2)


def test_gated_network_runs_in_opencv(gated):
    """OpenCV's Darknet importer loads the gated files; the gate is one more output, equal to
    our score, and the base head's [yolo] output is unchanged."""
    cv2 = pytest.importorskip("cv2")
    from opencv_util import opencv_yolo_outputs, to_opencv_layout

    from netsurgery.darknet.model import load_model

    work, paths, _ = gated
    model = load_model(work / "gated.cfg", work / "gated.weights", inference=False)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ours = model.run(x, [4, 11])
    net = cv2.dnn.readNetFromDarknet(str(work / "gated.cfg"), str(work / "gated.weights"))
    net.setInput(x.numpy())
    names = net.getUnconnectedOutLayersNames()
    outs = dict(zip(names, net.forward(names)))
    score = [v for v in outs.values() if v.size == 1]
    assert len(score) == 1
    assert float(score[0].reshape(-1)[0]) == pytest.approx(float(ours[11].reshape(-1)[0]),
                                                            abs=1e-5)
    yolo = opencv_yolo_outputs(work / "gated.cfg", work / "gated.weights", x.numpy(), work)
    base = to_opencv_layout(ours[4], model.network.layers[4], 64, 64)
    np.testing.assert_allclose(yolo[4], base, atol=1e-4)


def test_split_of_a_gated_task_is_the_task_network(gated):
    from test_heads import run_quiet

    work, _, _ = gated
    for prefix in ("merged", "gated"):
        rc, _, err = run_quiet(["split", work / f"{prefix}.cfg", work / f"{prefix}.weights",
                                "--heads", work / f"{prefix}.heads.json", "--task", "shapes",
                                "-o", work / f"split_{prefix}"])
        assert rc == 0, err
    for suffix in (".cfg", ".weights"):
        assert (work / f"split_gated{suffix}").read_bytes() == \
            (work / f"split_merged{suffix}").read_bytes()


def test_gated_tail_runs_only_where_the_gate_passes(gated):
    """Layers executed, counted through the model's execution plans: a closed gate skips the
    task's tail (route 5 and layers 6..7), an open one runs it; the base head never changes."""
    from netsurgery.surgery.multihead import load_merged

    work, _, _ = gated
    mm = load_merged(work / "gated.cfg", work / "gated.weights", work / "gated.heads.json")
    executed: list[int] = []
    plan = mm.model.plan

    def counting(targets, have=()):
        p = plan(targets, have)
        executed.extend(p.order)
        return p

    mm.model.plan = counting
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    gate = mm.heads.group("shapes").gate
    with torch.inference_mode():
        ungated = mm.run(x, gates=False)
        for threshold, expected_images in ((1.5, []), (0.0, [0, 1])):
            gate.threshold = threshold
            executed.clear()
            runs = mm.run(x)
            assert runs["shapes"].images == expected_images
            tail_ran = {5, 6, 7} <= set(executed)
            assert tail_ran == bool(expected_images)
            assert set(range(8, 12)) <= set(executed)  # the gate itself always runs
            assert torch.equal(runs["pets"].outputs[4], ungated["pets"].outputs[4])
        assert torch.equal(runs["shapes"].outputs[7], ungated["shapes"].outputs[7])


def test_detect_and_info_use_the_gate(gated):
    import json

    from test_heads import run_quiet

    work, paths, _ = gated
    images = [str(p) for p in paths.valid_images[:12]]
    found = {}
    for flag in ([], ["--no-gates"]):
        rc, _, err = run_quiet(["detect", work / "gated.cfg", work / "gated.weights", *images,
                                "--heads", work / "gated.heads.json", "--thresh", "0.01",
                                "--json", work / f"det{len(flag)}.json", "--overwrite", *flag])
        assert rc == 0, err
        found[bool(flag)] = json.loads((work / f"det{len(flag)}.json").read_text())
    # whatever the detections' JSON shape, the base head's must not change with the gate
    assert _head_records(found[False], "pets") == _head_records(found[True], "pets")
    gated_task = _head_records(found[False], "shapes")
    assert all(r in _head_records(found[True], "shapes") for r in gated_task)
    rc, out, err = run_quiet(["info", work / "gated.cfg", "--heads", work / "gated.heads.json"])
    assert rc == 0, err
    assert "with gates:" in out
    assert "dead layer" not in out  # the gate's score is an output, read at run time


def _head_records(data, head: str) -> list:
    records = data["detections"] if isinstance(data, dict) else data
    return [r for r in records if r.get("head") == head]


def test_gated_heads_file_matches_the_json_schema(gated):
    jsonschema = pytest.importorskip("jsonschema")
    from test_heads import SCHEMA

    work, _, _ = gated
    data = json.loads((work / "gated.heads.json").read_text())
    assert data["tasks"][0]["gate"]["layers"] == [8, 11]
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
