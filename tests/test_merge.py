"""merge / split / lazy heads on the real yolov3-tiny, and the YOLOv3 structure at k=73."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import shared_path

from netsurgery.cli.app import run
from netsurgery.darknet.cfg import load_cfg
from netsurgery.darknet.model import load_model
from netsurgery.darknet.network import build_network
from netsurgery.errors import UsageError
from netsurgery.surgery.heads import load_heads
from netsurgery.surgery.merge import TaskInput, merge, merge_files, split
from netsurgery.surgery.multihead import load_merged
from netsurgery.surgery.weighted import WeightedNetwork, load_weighted

LOGO_ANCHORS = [12, 16, 20, 30, 40, 40, 60, 70, 100, 120, 200, 200]


def make_task(base: WeightedNetwork, k: int, classes: int, seed: int,
              anchors=None) -> WeightedNetwork:
    """A task derived from ``base``: layers 0..k unchanged, the tail re-weighted (random
    perturbations and fresh arrays where the class count changes the shape)."""
    cfg = base.cfg.copy()
    rng = np.random.default_rng(seed)
    for i, section in enumerate(cfg.layers):
        if section.type == "yolo":
            section.set("classes", classes)
            if anchors:
                section.set("anchors", anchors)
            n = len(section.get_ints("mask"))
            cfg.layers[i - 1].set("filters", n * (classes + 5))
    task = WeightedNetwork(build_network(cfg), dict(base.arrays), base.header)
    for spec in task.network.layers[k + 1:]:
        arrays = spec.weight_arrays()
        if not arrays:
            continue
        old = base.arrays.get(spec.index, {})
        new = {}
        for a in arrays:
            if a.name in old and old[a.name].shape == a.shape:
                new[a.name] = (old[a.name] * rng.uniform(0.9, 1.1, a.shape)).astype(np.float32)
            elif a.name == "rolling_variance":
                new[a.name] = rng.uniform(0.5, 2.0, a.shape).astype(np.float32)
            else:
                new[a.name] = (rng.standard_normal(a.shape) * 0.05).astype(np.float32)
        task.arrays[spec.index] = new
    return task


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, yolov3_tiny):
    """Base yolov3-tiny plus two tasks per share point, written to disk."""
    cfg, weights = yolov3_tiny
    root = tmp_path_factory.mktemp("merge")
    base = load_weighted(cfg, weights)
    files = {}
    for k in (8, 12):
        for name, classes, anchors, seed in (("logo", 1, LOGO_ANCHORS, 1), ("text", 3, None, 2)):
            task = make_task(base, k, classes, seed + k, anchors)
            stem = root / f"{name}{k}"
            task.save(f"{stem}.cfg", f"{stem}.weights")
            files[(name, k)] = (f"{stem}.cfg", f"{stem}.weights")
    return root, (str(cfg), str(weights)), files


def _input(seed=0, size=416):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, size, size), generator=g)


@pytest.mark.parametrize("k", [12, 8])
def test_merged_heads_equal_separate_models(tiny_setup, k):
    root, base_files, files = tiny_setup
    out = str(root / f"merged{k}")
    tasks = [f"{n}={files[(n, k)][0]}:{files[(n, k)][1]}" for n in ("logo", "text")]
    merged, heads = merge_files(*base_files, tasks, out, share_until=k)
    # base 24 layers + per task (1 route + 23 - k tail layers)
    assert len(merged) == 24 + 2 * (1 + 23 - k)
    mm = load_merged(f"{out}.cfg", f"{out}.weights", f"{out}.heads.json", inference=False)
    x = _input()
    with torch.no_grad():
        got = mm(x)
        base_alone = load_model(*base_files)(x)
        for b, m in zip(base_alone, got["base"]):
            assert torch.equal(b, m), "base head must be bit-identical"
        for name in ("logo", "text"):
            alone = load_model(*files[(name, k)])(x)
            assert len(alone) == len(got[name]) == 2
            for a, m in zip(alone, got[name]):
                assert a.shape == m.shape
                assert torch.max(torch.abs(a - m)).item() <= 1e-5
    assert heads.tasks[0].classes == 1 and heads.tasks[1].classes == 3
    assert heads.tasks[0].route == 24
    loaded = load_heads(f"{out}.heads.json")
    assert loaded.tasks[1].yolo_layers == heads.tasks[1].yolo_layers


def test_merged_network_loads_in_opencv_with_same_outputs(tiny_setup):
    cv2 = pytest.importorskip("cv2")
    from opencv_util import to_opencv_layout  # written with the OpenCV conformance tests

    root, base_files, files = tiny_setup
    out = str(root / "merged_cv")
    tasks = [f"{n}={files[(n, 12)][0]}:{files[(n, 12)][1]}" for n in ("logo", "text")]
    merge_files(*base_files, tasks, out, share_until=12)
    network = build_network(f"{out}.cfg")
    text = open(f"{out}.cfg").read().replace("[yolo]", "[yolo]\nthresh=0\nnms_threshold=0")
    cv_cfg = root / "merged_cv_thresh0.cfg"
    cv_cfg.write_text(text)
    net = cv2.dnn.readNetFromDarknet(str(cv_cfg), f"{out}.weights")
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    x = _input(3)
    net.setInput(x.numpy())
    names = net.getUnconnectedOutLayersNames()
    cv_outs = net.forward(names)
    model = load_model(f"{out}.cfg", f"{out}.weights", inference=True)
    with torch.no_grad():
        ours = model(x)
    assert len(cv_outs) == len(ours) == 6
    for spec_index, mine, theirs in zip(network.heads(), ours, cv_outs):
        spec = network.layers[spec_index]
        expected = to_opencv_layout(mine[0].numpy(), spec, network.net.width, network.net.height)
        assert theirs.shape == expected.shape
        # OpenCV folds BatchNorm with eps 1e-6 (Darknet: 1e-5), which moves each of the ~20
        # BN layers' outputs by up to ~5e-6 relative; w, h are exp() of raw outputs, so they
        # agree relatively; objectness and class probabilities (in [0, 1]) absolutely
        np.testing.assert_allclose(theirs[:, :4], expected[:, :4], rtol=5e-3, atol=5e-4)
        np.testing.assert_allclose(theirs[:, 4:], expected[:, 4:], atol=5e-4)


def test_yolov3_share_73_structure():
    cfg = shared_path("darknet-cfg", "yolov3.cfg")
    base = load_weighted(cfg)
    task_cfg = base.cfg.copy()
    for i, section in enumerate(task_cfg.layers):  # a one-class task
        if section.type == "yolo":
            section.set("classes", 1)
            task_cfg.layers[i - 1].set("filters", 18)
    task = WeightedNetwork(build_network(task_cfg))
    merged, heads = merge(base, [TaskInput("task", task, 73)])
    network = merged.network
    assert len(network.layers) == 141  # 107 + 1 route + 33
    route = heads.tasks[0].route
    assert route == 107 and network.layers[107].sources() == [73]
    tail = network.layers[108:]
    shortcut = [s for s in tail if s.type_name == "shortcut"]
    assert shortcut[0].sources() == [71]  # task layer 74 = shortcut from 71 → shared trunk
    route_sources = sorted(src for s in tail if s.type_name == "route" for src in s.sources())
    assert 36 in route_sources and 61 in route_sources
    assert all(src <= 73 or src >= 108 for s in tail for src in s.sources())


def test_split_restores_each_task_byte_identical(tiny_setup):
    root, base_files, files = tiny_setup
    out = str(root / "merged_split")
    tasks = [f"{n}={files[(n, 8)][0]}:{files[(n, 8)][1]}" for n in ("logo", "text")]
    merge_files(*base_files, tasks, out, share_until=8)
    for name in ("logo", "text", "base"):
        target = str(root / f"split_{name}")
        assert run(["split", f"{out}.cfg", f"{out}.weights", "--heads", f"{out}.heads.json",
                    "--task", name, "-o", target]) == 0
        src_cfg, src_weights = files[(name, 8)] if name != "base" else base_files
        assert open(f"{target}.weights", "rb").read() == open(src_weights, "rb").read()
        a, b = build_network(f"{target}.cfg"), build_network(src_cfg)
        assert [s.type_name for s in a.layers] == [s.type_name for s in b.layers]
        assert [s.out_shape for s in a.layers] == [s.out_shape for s in b.layers]
        assert [s.inputs() for s in a.layers] == [s.inputs() for s in b.layers]


def test_split_keeps_the_task_cfg_as_it_was(tiny_setup, tmp_path):
    """Comments, key order and stopbackward=1 of the task's trunk come back (issue 21): a
    split cfg continued in Darknet still freezes the trunk."""
    root, base_files, files = tiny_setup
    cfg_path, weights = files[("logo", 8)]
    lines = open(cfg_path).read().splitlines()
    sections = [i for i, line in enumerate(lines) if line.startswith("[")]
    k_header = sections[1 + 8]  # [net] is section 0
    lines.insert(k_header + 1, "stopbackward=1")
    lines.insert(sections[1 + 3], "# the trunk: COCO's")
    lines.insert(0, "# logo detector, retrained from layer 9")
    lines.append("# end of the logo cfg")
    task_cfg = tmp_path / "logo.cfg"
    task_cfg.write_text("\n".join(lines) + "\n")
    out = tmp_path / "m"
    merge_files(*base_files, [f"logo={task_cfg}:{weights}"], str(out), share_until=8)
    assert "stopbackward" not in (tmp_path / "m.cfg").read_text()  # the base's trunk is kept
    assert run(["split", f"{out}.cfg", f"{out}.weights", "--heads", f"{out}.heads.json",
                "--task", "logo", "-o", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back.cfg").read_text() == load_cfg(task_cfg).to_text()
    assert (tmp_path / "back.weights").read_bytes() == open(weights, "rb").read()
    assert load_cfg(tmp_path / "back.cfg").layers[8].get_int("stopbackward") == 1


def test_merged_network_runs_in_memory_like_its_files(tiny_setup, tmp_path):
    root, base_files, files = tiny_setup
    tasks = [TaskInput(n, load_weighted(*files[(n, 8)]), 8) for n in ("logo", "text")]
    merged, heads = merge(load_weighted(*base_files), tasks)
    merged.save(tmp_path / "m.cfg", tmp_path / "m.weights")
    x = _input(4)
    with torch.inference_mode():
        in_memory = merged.model(inference=True)(x)
        from_files = load_model(tmp_path / "m.cfg", tmp_path / "m.weights", inference=True)(x)
    assert len(in_memory) == len(from_files) == 6
    assert all(torch.equal(a, b) for a, b in zip(in_memory, from_files))


def test_lazy_heads_run_only_needed_layers(tiny_setup):
    root, base_files, files = tiny_setup
    out = str(root / "merged_lazy")
    tasks = [f"{n}={files[(n, 8)][0]}:{files[(n, 8)][1]}" for n in ("logo", "text")]
    merge_files(*base_files, tasks, out, share_until=8)
    mm = load_merged(f"{out}.cfg", f"{out}.weights", f"{out}.heads.json")
    executed = []
    hooks = [m.register_forward_hook(lambda mod, i, o, idx=idx: executed.append(idx))
             for idx, m in enumerate(mm.model.layers)]
    x = _input(1)
    with torch.no_grad():
        only_text = mm(x, heads=["text"])
    # text: trunk 0..8 (9 layers) + route 40 + tail 41..55 (15 layers)
    assert sorted(executed) == list(range(0, 9)) + [40] + list(range(41, 56))
    executed.clear()
    with torch.no_grad():
        trunk = mm.trunk(x)
        executed.clear()
        logo = mm(x, heads=["logo"], cache=trunk)
    assert min(executed) >= 24, "the cached trunk must not be recomputed"
    with torch.no_grad():
        full = mm(x)
    for a, b in zip(only_text["text"], full["text"]):
        assert torch.equal(a, b)
    for a, b in zip(logo["logo"], full["logo"]):
        assert torch.equal(a, b)
    for h in hooks:
        h.remove()


def test_common_classes_pads_heads_and_keeps_detections(tiny_setup, tmp_path):
    root, base_files, files = tiny_setup
    names = {}
    for name, classes in (("logo", 1), ("text", 3)):
        p = tmp_path / f"{name}.names"
        p.write_text("\n".join(["logo"] if classes == 1 else ["text", "line", "logo"]) + "\n")
        names[name] = str(p)
    coco = shared_path("models", "coco.names")
    base = load_weighted(*base_files)
    tasks = [TaskInput(n, load_weighted(*files[(n, 12)]), 12, names[n])
             for n in ("logo", "text")]
    plain, plain_heads = merge(base, tasks, base_names_file=str(coco))
    padded, padded_heads = merge(base, tasks, base_names_file=str(coco), common_classes=True)
    union = padded_heads.common_classes
    assert union[:80] == [n.strip() for n in coco.read_text().splitlines()][:80]
    # heads in order: COCO's 80, then the logo head's 'logo', then the text head's new names
    # ('logo' again is the same class, listed once)
    assert union[80:] == ["logo", "text", "line"]
    assert padded_heads.tasks[1].class_map == [81, 82, 80]
    plain.save(tmp_path / "p.cfg", tmp_path / "p.weights")
    padded.save(tmp_path / "q.cfg", tmp_path / "q.weights")
    x = _input(2)
    mp = load_model(tmp_path / "p.cfg", tmp_path / "p.weights", inference=True)
    mq = load_model(tmp_path / "q.cfg", tmp_path / "q.weights", inference=True)
    with torch.no_grad():
        outs_p, outs_q = mp(x), mq(x)
    groups = plain_heads.groups()
    for g_plain, g_pad in zip(groups, padded_heads.groups()):
        for yp, yq in zip(g_plain.yolo_layers, g_pad.yolo_layers):
            p = outs_p[plain.network.heads().index(yp)][0].numpy()
            q = outs_q[padded.network.heads().index(yq)][0].numpy()
            n_anchors = p.shape[0] // (g_plain.classes + 5)
            p = p.reshape(n_anchors, g_plain.classes + 5, *p.shape[1:])
            q = q.reshape(n_anchors, len(union) + 5, *q.shape[1:])
            np.testing.assert_allclose(q[:, :5], p[:, :5], atol=1e-5)
            for j, u in enumerate(g_pad.class_map):
                np.testing.assert_allclose(q[:, 5 + u], p[:, 5 + j], atol=1e-5)
            owned = set(g_pad.class_map)
            others = [5 + u for u in range(len(union)) if u not in owned]
            if others:
                assert q[:, others].max() < 1e-12  # logistic(-30)


def test_merge_refuses_changed_trunk_and_bad_outputs(tiny_setup, capsys):
    root, base_files, files = tiny_setup
    task = f"logo={files[('logo', 8)][0]}:{files[('logo', 8)][1]}"
    # the k=8 task changed layer 10, so sharing until 12 must be refused
    rc = run(["merge", "--base", *base_files, "--task", task, "--share-until", "12",
              "-o", str(root / "refused")])
    err = capsys.readouterr().err
    assert rc == 2 and "differ from the base" in err and "Traceback" not in err
    assert not (root / "refused.cfg").exists() and not (root / "refused.weights").exists()
    rc = run(["merge", "--base", *base_files, "--task", task, "--share-until", "12",
              "--force", "-o", str(root / "forced")])
    assert rc == 0 and "warning" in capsys.readouterr().err
    rc = run(["merge", "--base", *base_files, "--task", task, "--share-until", "8",
              "-o", str(root / "forced")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    out = base_files[1][: -len(".weights")]
    rc = run(["merge", "--base", *base_files, "--task", task, "--share-until", "8", "-o", out,
              "--overwrite"])
    assert rc == 2 and "overwrite the input" in capsys.readouterr().err


def test_info_on_merged_network_shows_savings(tiny_setup, capsys):
    root, base_files, files = tiny_setup
    out = str(root / "merged_info")
    merge_files(*base_files, [f"logo={files[('logo', 12)][0]}:{files[('logo', 12)][1]}"], out,
                share_until=12)
    assert run(["info", f"{out}.cfg", "--heads", f"{out}.heads.json"]) == 0
    text = capsys.readouterr().out
    base_params = build_network(base_files[0]).params
    logo = build_network(files[("logo", 12)][0])
    merged = build_network(f"{out}.cfg")
    # the merged network holds the base once plus the logo tail (layers 13..23)
    tail = sum(s.params for s in logo.layers[13:])
    assert merged.params == base_params + tail
    assert f"separate (sum)     {base_params + logo.params:,}" in text
    assert f"merged             {merged.params:,}" in text


def test_time_merged_against_each_head_alone(tiny_setup, capsys):
    """Timing values themselves are not asserted (benchmarks do that): the rounds, the sum,
    the FLOP ratio shown beside the time, and the command's output."""
    from netsurgery.analysis.cost import merge_savings
    from netsurgery.detection.timing import time_merged, time_model

    root, base_files, files = tiny_setup
    out = str(root / "merged_time")
    merge_files(*base_files, [f"logo={files[('logo', 8)][0]}:{files[('logo', 8)][1]}"], out,
                share_until=8)
    heads = load_heads(f"{out}.heads.json")
    model = load_model(f"{out}.cfg", f"{out}.weights", inference=True)
    timing = time_merged(model, heads, repeat=3)
    assert [t.name for t in timing.heads] == [heads.base.name, "logo"]
    assert all(len(t.runs_ms) == 3 and min(t.runs_ms) > 0 for t in [*timing.heads,
                                                                    timing.merged])
    assert timing.separate_ms == sum(t.median_ms for t in timing.heads)
    flops = merge_savings(model.network, heads).bflops_ratio
    assert timing.bflops_ratio == flops and 0.5 < flops < 1
    assert len(time_model(model, repeat=2).runs_ms) == 2
    assert run(["time", f"{out}.cfg", f"{out}.weights", "--heads", f"{out}.heads.json",
                "--repeat", "2"]) == 0
    text = capsys.readouterr().out
    assert "logo alone" in text and "merged, all heads" in text
    assert f"FLOPs {flops:.3f}" in text
    assert run(["time", f"{out}.cfg", f"{out}.weights", "--repeat", "0"]) == 2
    assert "repeat=0" in capsys.readouterr().err
