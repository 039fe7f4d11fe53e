"""suggest-k: the cached-trunk tails (same numbers as the trainer and the full model), the
candidates, the recommendation rule, its confidence, and the command end to end on the real
yolov3-tiny at a tiny input size and a tiny synthetic dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_path
from test_json_schemas import check

from netsurgery.analysis.suggest import (
    block_ends,
    check_candidates,
    fit_against_speed,
    reading_notes,
    recommend,
    recommend_under_uncertainty,
    spearman,
    speed_loss,
)
from netsurgery.analysis.tails import (
    TailRun,
    base_initialised,
    cache_features,
    check_cache_fits,
    load_task,
    native_bfloat16,
    resolve_dtype,
)
from netsurgery.cli.app import run
from netsurgery.darknet.cfg import load_cfg
from netsurgery.darknet.network import build_network
from netsurgery.errors import UsageError
from netsurgery.surgery.editing import retarget_heads
from netsurgery.training.config import TrainConfig
from netsurgery.training.synth import make_shapes_dataset
from netsurgery.training.train import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """yolov3-tiny at 96x96 with 3 classes, 12 shapes images (10 train, 2 valid)."""
    root = tmp_path_factory.mktemp("suggest")
    base_cfg = load_cfg(shared_path("darknet-cfg", "yolov3-tiny.cfg"))
    base_cfg.net.set("width", 96)
    base_cfg.net.set("height", 96)
    base_cfg.save(root / "base.cfg")
    data = make_shapes_dataset(root / "data", 12, seed=3, size=(96, 96))
    task = retarget_heads(base_cfg, 3)
    task.net.set("batch", 4)
    task.net.set("subdivisions", 1)
    task.net.set("burn_in", 0)
    task.net.set("max_batches", 4)
    task.save(root / "task.cfg")
    return (root, str(root / "base.cfg"), str(shared_path("models", "yolov3-tiny.weights")),
            str(root / "task.cfg"), str(data.data))


# ------------------------------------------------------------------------ cached trunk


def test_cached_frontier_gives_the_full_models_outputs(tiny):
    root, base_cfg, weights, task_cfg, data = tiny
    task = load_task(task_cfg, weights, base_cfg, data)
    cache = cache_features(task, [4, 8, 13])
    assert cache.layers == (4, 8, 13)  # k=8 and k=13 both need layer 8 (the route to 20)
    assert cache.train[4].shape == (10, 64, 24, 24) and cache.valid[13].shape[0] == 2
    model = base_initialised(task).eval()
    x, _ = cache.images.sample(0, 0, 3)
    heads = [15, 22]
    with torch.no_grad():
        full = model.run(torch.from_numpy(x)[None], heads)
        for k in (4, 8, 13):
            front = {4: [4], 8: [8], 13: [8, 13]}[k]
            tail = model.run(torch.from_numpy(x)[None], heads,
                             {j: cache.train[j][3:4] for j in front})
            for h in heads:
                torch.testing.assert_close(tail[h], full[h], rtol=1e-4, atol=1e-4)


def test_tail_run_trains_as_the_trainer_does(tiny, tmp_path):
    """Same initialisation, batches, schedule and loss as train() without augmentation:
    the per-iteration losses agree to float rounding."""
    root, base_cfg, weights, task_cfg, data = tiny
    result = train(TrainConfig(task_cfg, weights, data, tmp_path / "t", freeze_until=12,
                               iterations=3, augment=False, base_cfg=base_cfg,
                               validate=False))
    task = load_task(task_cfg, weights, base_cfg, data)
    tail = TailRun(task, cache_features(task, [12]), 12)
    tail.train(3)
    assert [round(v, 3) for v in tail.losses] == pytest.approx(
        [loss for _, loss in result.losses], abs=2e-3)
    assert result.losses[0][1] > 1  # a real loss, not zeros
    ev = tail.evaluate()
    assert 0.0 <= ev.map <= 1.0 and tail.model.training  # mode restored


def test_tail_run_in_bfloat16_tracks_float32(tiny):
    """bfloat16 autocast changes the arithmetic (the losses are not the float32 ones) but
    not the course: each iteration's loss within 3 % of float32's."""
    root, base_cfg, weights, task_cfg, data = tiny
    task = load_task(task_cfg, weights, base_cfg, data)
    cache = cache_features(task, [8])
    runs = {dtype: TailRun(task, cache, 8, dtype) for dtype in ("float32", "bfloat16")}
    for run in runs.values():
        run.train(4)
    full, half = runs["float32"].losses, runs["bfloat16"].losses
    assert full != half  # autocast was on
    assert half == pytest.approx(full, rel=0.03)
    again = TailRun(task, cache, 8, "bfloat16")
    again.train(4)
    assert again.losses == half  # reproducible, bit for bit
    # the weights stay float32 (autocast casts copies)
    assert {p.dtype for p in runs["bfloat16"].model.parameters()} == {torch.float32}
    ev = runs["bfloat16"].evaluate()
    assert 0.0 <= ev.map <= 1.0
    with pytest.raises(ValueError, match="dtype 'half'"):
        TailRun(task, cache, 8, "half")


def test_dtype_auto_is_bfloat16_only_where_the_cpu_has_it():
    assert resolve_dtype("auto") == ("bfloat16" if native_bfloat16() else "float32")
    assert resolve_dtype("float32") == "float32" and resolve_dtype("bfloat16") == "bfloat16"
    with pytest.raises(UsageError, match="--dtype float16: expected auto, float32 or bfloat16"):
        resolve_dtype("float16")


def test_reading_notes():
    assert reading_notes(75, 300, 0.9, "bfloat16", "bfloat16") == [
        "the predicted mAP is the level after 75 of 300 iterations, not after the full "
        "training: it ranks the candidates (docs/suggest-k.md)"]
    assert reading_notes(300, 300, 0.9, "float32", "float32") == []
    unsure = reading_notes(300, 300, 0.5, "auto", "float32")
    assert [n.split(":")[0] for n in unsure] == ["no k is within tolerance with probability 0.8",
                                                 "float32"]


def test_feature_cache_size_is_checked_before_the_work():
    cfg = load_cfg(shared_path("darknet-cfg", "yolov3-tiny.cfg"))
    cfg.net.set("width", 128)
    cfg.net.set("height", 128)
    net = build_network(cfg)
    # per image: the input 3x128x128 and the outputs of layers 4 (64x32x32), 6 (128x16x16),
    # 8 (256x8x8), 10 (512x4x4), 12 (1024x4x4), 13 (256x4x4), float32; the validation's
    # 438 MiB of features plus its 800 inputs
    per_image = 4 * (3 * 128 * 128 + 64 * 32 * 32 + 128 * 16 * 16 + 256 * 8 * 8
                     + 512 * 4 * 4 + 1024 * 4 * 4 + 256 * 4 * 4)
    ks = [4, 6, 8, 10, 12, 13]
    assert check_cache_fits(net, ks, 400, 400, limit=2**40) == 800 * per_image == 616038400
    with pytest.raises(UsageError, match=r"need about 0\.6 GiB \(0\.7 MiB per image; MiB per "
                                         r"image by frontier layer 4: 0\.2, 6: 0\.1"):
        check_cache_fits(net, ks, 400, 400, limit=2**29)


def test_tail_run_refuses_a_k_that_freezes_a_head(tiny):
    root, base_cfg, weights, task_cfg, data = tiny
    task = load_task(task_cfg, weights, base_cfg, data)
    with pytest.raises(ValueError, match="k=15: expected 0 <= k < 15"):
        TailRun(task, cache_features(task, [13]), 15)


# ------------------------------------------------------------------------ candidates


def test_block_ends_of_yolov3_tiny_and_yolov3():
    tiny_net = build_network(shared_path("darknet-cfg", "yolov3-tiny.cfg"))
    # before each stride-2 maxpool (1, 3, 5, 7, 9) and the route sources 8 and 13
    assert block_ends(tiny_net) == [0, 2, 4, 6, 8, 13]
    full = build_network(shared_path("darknet-cfg", "yolov3.cfg"))
    # before each stride-2 conv (1, 5, 12, 37, 62) and the route sources 36, 61, 79
    assert block_ends(full) == [0, 4, 11, 36, 61, 79]


def test_candidates_must_leave_the_heads_trainable():
    net = build_network(shared_path("darknet-cfg", "yolov3-tiny.cfg"))
    assert check_candidates(net, [13, 4, 4]) == [4, 13]
    with pytest.raises(UsageError, match=r"--candidates 15: expected layer indices 0\.\.14"):
        check_candidates(net, [4, 15])


# ------------------------------------------------------------------------ recommendation


def test_recommend_takes_the_largest_k_within_tolerance():
    predicted = {4: 0.60, 6: 0.61, 8: 0.595, 10: 0.58, 12: 0.50, 13: 0.40}
    assert recommend(predicted, 2.0) == 8  # within 2 of 61.0: 60.0, 61.0, 59.5
    assert recommend(predicted, 3.0) == 10
    assert recommend(predicted, 1.5) == 8  # 59.5 >= 59.5
    assert recommend(predicted, 0.0) == 6
    assert recommend(predicted, 25.0) == 13


def test_recommendation_under_uncertainty():
    # certain predictions: the plain rule, with probability 1
    predicted = {4: 0.60, 6: 0.61, 8: 0.595, 10: 0.58, 12: 0.50, 13: 0.40}
    tiny = {k: 1e-6 for k in predicted}
    assert recommend_under_uncertainty(predicted, tiny, 2.0) == (8, 1.0)
    assert recommend_under_uncertainty(predicted, tiny, 2.0)[0] == recommend(predicted, 2.0)
    # one sigma apart, equal sigmas s, tolerance 0: k=8 is the larger with probability
    # P(X8 - X4 >= 0), X8 - X4 ~ N(-s, 2 s^2): Phi(-1/sqrt(2)) = 0.2398; k=4's 0.760 is
    # below the 0.8 asked for, so the most probable, k=4, is recommended with it
    k, chance = recommend_under_uncertainty({4: 0.52, 8: 0.50}, {4: 0.02, 8: 0.02}, 0.0,
                                            draws=40000)
    assert k == 4 and chance == pytest.approx(0.760, abs=0.01)
    # a tolerance wider than the gap and the noise: the larger k is sure
    assert recommend_under_uncertainty({4: 0.52, 8: 0.50}, {4: 0.005, 8: 0.005}, 5.0) == \
        (8, 1.0)
    # flat and noisy (the validation's case): not the largest k, the most probable one
    flat = {4: 0.227, 6: 0.227, 8: 0.225, 10: 0.221, 12: 0.219, 13: 0.212}
    k, chance = recommend_under_uncertainty(flat, {k: 0.04 for k in flat}, 2.0)
    assert recommend(flat, 2.0) == 13 and k in (4, 6) and chance < 0.5


def test_spearman_matches_hand_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3, 4) vs (1, 3, 2, 4): 1 - 6*2/(4*15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties get mean ranks: scipy.stats.spearmanr([1,2,2,3],[1,2,3,4]) = 0.9486833
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_speed_is_the_mean_loss_of_the_last_third():
    assert speed_loss([9.0, 8.0, 7.0, 6.0, 5.0, 4.0]) == pytest.approx(4.5)  # last 2 of 6
    assert speed_loss([3.0]) == 3.0
    with pytest.raises(ValueError):
        speed_loss([])


def test_fit_against_speed_follows_the_speed_and_averages_the_noise():
    # mAP = 0.9 - 0.1 * loss exactly: the line gives each its own value, sigma at the floor
    speeds = {4: 5.0, 8: 6.0, 13: 7.0}
    predicted, sigma = fit_against_speed(speeds, {4: 0.40, 8: 0.30, 13: 0.20})
    assert predicted == pytest.approx({4: 0.40, 8: 0.30, 13: 0.20}) and sigma == 0.005
    # a noisy middle point: least squares through (5, .4), (6, .36), (7, .2): slope -0.1,
    # mean 0.32; residuals -0.02, +0.04, -0.02 -> sigma sqrt(0.0024 / 1) = 0.04899
    predicted, sigma = fit_against_speed(speeds, {4: 0.40, 8: 0.36, 13: 0.20})
    assert predicted == pytest.approx({4: 0.42, 8: 0.32, 13: 0.22})
    assert sigma == pytest.approx(0.0489898, abs=1e-6)
    # mAPs rising with the loss (noise): no order is invented, every candidate gets the mean
    predicted, _ = fit_against_speed(speeds, {4: 0.20, 8: 0.30, 13: 0.40})
    assert predicted == pytest.approx({4: 0.30, 8: 0.30, 13: 0.30})
    assert fit_against_speed({4: 5.0}, {4: 0.3}) == ({4: 0.3}, 0.005)


# ------------------------------------------------------------------------ the command


def test_suggest_k_end_to_end(tiny, tmp_path, capsys):
    root, base_cfg, weights, task_cfg, data = tiny
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"points": [{"k": 12, "map": 0.1}, {"k": 13, "map": 0.05},
                                            {"k": -1, "map": 0.2}]}))
    out, chart = tmp_path / "s.json", tmp_path / "s.png"
    rc = run(["suggest-k", "--cfg", task_cfg, "--weights", weights, "--base-cfg", base_cfg,
              "--data", data, "--candidates", "12,13", "--iterations", "16", "--budget", "0.5",
              "--json", str(out), "--plot", str(chart), "--compare", str(sweep)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    result = check(out, "suggest-k")  # the JSON Schema in docs/schemas
    assert [c["k"] for c in result["candidates"]] == [12, 13]
    by_k = {c["k"]: c for c in result["candidates"]}
    for c in result["candidates"]:
        assert c["iterations"] == 8 and 0.0 <= c["observed_map"] <= 1.0
        assert 0.0 <= c["predicted_map"] <= 1.0 and c["map_sigma"] >= 0.005
        assert c["speed_loss"] > 1  # a real loss, not zeros
    # the faster tail (lower loss) is never predicted lower
    fast, slow = sorted(by_k, key=lambda k: by_k[k]["speed_loss"])
    assert by_k[fast]["predicted_map"] >= by_k[slow]["predicted_map"]
    # yolov3-tiny: layers 0..12 hold 0.711 of the params and 0.672 of the FLOPs (cost.py)
    assert by_k[12]["params_fraction"] == pytest.approx(0.711, abs=5e-4)
    assert by_k[12]["bflops_fraction"] == pytest.approx(0.672, abs=5e-4)
    assert 0.0 <= result["confidence"] <= 1.0
    assert result["method"] and result["seconds"] > 0 and result["target_iterations"] == 16
    assert result["dtype"] == resolve_dtype("auto")
    assert "recommended k =" in printed and "Spearman rank correlation" in printed
    assert "note: the predicted mAP is the level after 8 of 16 iterations" in printed
    assert result["notes"][0].startswith("the predicted mAP is the level after 8 of 16")
    import cv2

    image = cv2.imread(str(chart))
    assert image is not None and image.shape[0] > 300 and image.std() > 10


@pytest.mark.parametrize("args, message", [
    (["--candidates", "4,20"], "--candidates 20: expected layer indices 0..14"),
    (["--budget", "1.5"], "--budget 1.5: expected a fraction in (0, 1]"),
    (["--tolerance", "-1"], "--tolerance -1.0: expected a number of mAP points >= 0"),
    (["--plot", "x.jpg"], "unsupported chart format .jpg"),
    (["--dtype", "fp16"], "--dtype fp16: expected auto, float32 or bfloat16"),
])
def test_suggest_k_user_errors(tiny, capsys, args, message):
    root, base_cfg, weights, task_cfg, data = tiny
    rc = run(["suggest-k", "--cfg", task_cfg, "--weights", weights, "--base-cfg", base_cfg,
              "--data", data, "--iterations", "4", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
