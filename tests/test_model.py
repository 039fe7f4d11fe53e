"""DarknetModel behaviour beyond single-image conformance: batches, partial execution plans,
head outputs, BatchNorm folding and its invalidation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path

from netsurgery import NetsurgeryError, load_cfg, load_model


def conformance(case: str):
    folder = shared_path("conformance", case)
    return folder / "net.cfg", shared_path("conformance", case, "net.weights"), \
        np.load(folder / "input.npy")


@pytest.fixture(scope="module")
def tiny64():
    """The real yolov3-tiny at 64×64 (24 layers, heads 16 and 23) and an input."""
    cfg, weights = (shared_path("darknet-cfg", "yolov3-tiny.cfg"),
                    shared_path("models", "yolov3-tiny.weights"))
    model = load_model(cfg, weights, size=(64, 64), inference=True)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return model, x


def count_calls(model):
    """Forward hooks recording which layers ran."""
    ran: list[int] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, i=i: ran.append(i))
               for i, m in enumerate(model.layers)]
    return ran, handles


@pytest.mark.parametrize("inference", [False, True], ids=["exact", "inference"])
@pytest.mark.parametrize("case", ["cov-det-96", "cov-cls-64"])
def test_batch_gives_the_per_image_results(case, inference):
    cfg, weights, x0 = conformance(case)
    model = load_model(cfg, weights, inference=inference)
    gen = torch.Generator().manual_seed(5)
    one = torch.from_numpy(x0)
    batch = torch.cat([one, one.flip(-1), torch.rand(one.shape, generator=gen)])
    with torch.no_grad():
        together = model.layer_outputs(batch)
        for b in range(3):
            alone = model.layer_outputs(batch[b:b + 1])
            for i, (t, a) in enumerate(zip(together, alone)):
                scale = max(1.0, float(a.abs().max()))
                err = float((t[b:b + 1] - a).abs().max()) / scale
                assert err <= 1e-5, f"image {b}, layer {i}: {err}"
    assert not torch.equal(together[-1][0], together[-1][1])  # the images differ


def test_run_computes_only_what_the_targets_need(tiny64):
    model, x = tiny64
    with torch.no_grad():
        everything = model.layer_outputs(x)
        ran, handles = count_calls(model)
        try:
            out = model.run(x, [23])
            assert sorted(ran) == list(range(14)) + list(range(17, 24))  # not 14, 15, 16
            ran.clear()
            out16 = model.run(x, [16, 12])
            assert sorted(ran) == list(range(17))
            ran.clear()
            # with layer 13 given, the second head still needs layer 8 (route 20 reads it)
            again = model.run(x, [23], cache={13: everything[13]})
            assert sorted(ran) == list(range(9)) + list(range(17, 24))
            ran.clear()
            # with 8 and 13 given (a shared trunk), only the second head's own layers run
            again = model.run(x, [23], cache={8: everything[8], 13: everything[13]})
            assert sorted(ran) == list(range(17, 24))
        finally:
            for h in handles:
                h.remove()
    assert set(out) == {23} and set(out16) == {16, 12}
    for i, t in [(23, out[23]), (16, out16[16]), (12, out16[12]), (23, again[23])]:
        torch.testing.assert_close(t, everything[i], rtol=0, atol=0)
    plan = model.plan([23])
    assert plan.order == tuple(range(14)) + tuple(range(17, 24))
    # each output is freed after its last reader: layer 8 is read by 9 and by the route 20
    released = {j: plan.order[pos] for pos, js in plan.release_after.items() for j in js}
    assert released[8] == 20 and released[13] == 17 and 23 not in released


def test_forward_returns_the_head_outputs(tiny64):
    model, x = tiny64
    assert model.output_layers() == [16, 23]
    with torch.no_grad():
        heads = model(x)
        everything = model.layer_outputs(x)
        picked = model(x, targets=[3, 19])
    assert [tuple(h.shape) for h in heads] == [(1, 255, 2, 2), (1, 255, 4, 4)]
    torch.testing.assert_close(heads[0], everything[16], rtol=0, atol=0)
    torch.testing.assert_close(heads[1], everything[23], rtol=0, atol=0)
    torch.testing.assert_close(picked[1], everything[19], rtol=0, atol=0)


def test_classifier_output_is_the_last_layer():
    cfg, weights, x = conformance("cov-cls-64")
    model = load_model(cfg, weights, inference=True)
    assert model.output_layers() == [17]
    with torch.no_grad():
        (probs,) = model(torch.from_numpy(x))
    assert probs.shape == (1, 10, 1, 1)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-6)  # softmax over the 10 outputs


def test_wrong_input_shape_is_a_user_error(tiny64):
    model, _ = tiny64
    with pytest.raises(NetsurgeryError, match=r"input of shape \(1, 3, 32, 32\): expected "
                                              r"\(batch, 3, 64, 64\)"):
        model(torch.zeros(1, 3, 32, 32))


def test_folding_is_dropped_by_training_mode():
    """A fold is a snapshot: after weights change in training mode the model must not keep
    computing with the old folded kernels when it goes back to eval."""
    cfg, weights, x = conformance("cov-det-96")
    x = torch.from_numpy(x)
    model = load_model(cfg, weights, inference=True)
    with torch.no_grad():
        before = model.run(x, [2])[2]
    model.train()
    with torch.no_grad():
        model.layers[0].scales.mul_(2.0)
    model.eval()
    reference = load_model(cfg, weights)
    with torch.no_grad():
        reference.layers[0].scales.mul_(2.0)
        after, expected = model.run(x, [2])[2], reference.run(x, [2])[2]
    torch.testing.assert_close(after, expected, rtol=0, atol=0)
    assert not torch.allclose(after, before)
    model.inference()  # folds again, from the changed weights
    with torch.no_grad():
        torch.testing.assert_close(model.run(x, [2])[2], expected, rtol=1e-5, atol=1e-5)


def test_exact_and_folded_modes_agree_and_save_the_same_weights(tmp_path):
    cfg, weights, x = conformance("cov-det-96")
    exact = load_model(cfg, weights)
    fast = load_model(cfg, weights, inference=True)
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        a, b = exact(torch.from_numpy(x)), fast(torch.from_numpy(x))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=2e-5)
    fast.save_weights(tmp_path / "w")  # folding never touches the stored parameters
    assert (tmp_path / "w").read_bytes() == weights.read_bytes()


def test_save_cfg_and_other_sizes(tmp_path):
    cfg_path = shared_path("darknet-cfg", "yolov4-tiny.cfg")
    model = load_model(cfg_path, size=(96, 64))
    assert [tuple(model.network.layers[i].out_shape.as_list()) for i in model.output_layers()] \
        == [(255, 2, 3), (255, 4, 6)]
    with torch.no_grad():
        outs = model(torch.zeros(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 255, 2, 3), (2, 255, 4, 6)]
    model.save_cfg(tmp_path / "copy.cfg")
    assert load_cfg(tmp_path / "copy.cfg").to_text() == load_cfg(cfg_path).to_text()



SHORTCUT_CFG = """[net]
width=2
height=2
channels=2

[convolutional]
filters=2
size=1
activation=linear

[convolutional]
filters=1
size=1
activation=linear

[route]
layers=0

[shortcut]
from=1
{extra}
"""


@pytest.mark.parametrize("extra,weights,w_prev,w_from", [
    ("", None, (1.0, 1.0), (1.0, 1.0)),
    ("weights_type=per_feature", [0.5, 3.0], (0.5, 0.5), (3.0, 3.0)),
    ("weights_type=per_channel", [[0.5, 2.0], [3.0, 7.0]], (0.5, 2.0), (3.0, 7.0)),
], ids=["plain", "per_feature", "per_channel"])
def test_shortcut_from_fewer_channels_by_hand(extra, weights, w_prev, w_from):
    """Darknet's shortcut_multilayer_cpu: a 1-channel source adds to the first channel only
    (the overlapping flat range), weighted by the channel of the output position."""
    from netsurgery import parse_cfg_text

    model = load_model(parse_cfg_text(SHORTCUT_CFG.format(extra=extra), "s.cfg"))
    assert [s.out_shape.c for s in model.network.layers] == [2, 1, 2, 2]
    with torch.no_grad():
        model.layers[0].weights.copy_(torch.eye(2).view(2, 2, 1, 1))  # layer 0 = x
        model.layers[1].weights.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))  # x0
        for i in (0, 1):
            model.layers[i].biases.zero_()
        if weights is not None:
            model.layers[3].weights.copy_(torch.tensor(weights))  # [previous, from] first
        x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]]])
        out = model(x)[0][0]
    x0, x1 = x[0, 0], x[0, 1]
    # channel 0: previous·w + from·w; channel 1 lies beyond the source's 4 values
    torch.testing.assert_close(out[0], x0 * w_prev[0] + x0 * w_from[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], x1 * w_prev[1], rtol=0, atol=0)


@pytest.mark.parametrize("inference", [False, True], ids=["exact", "inference"])
@pytest.mark.parametrize("case,other", [("cov-det-96", (160, 128)),
                                        ("yolov4-tiny-160", (96, 224))])
def test_resize_equals_a_model_built_at_that_size(case, other, inference):
    """Darknet's resize_network: same weights, shapes of the other size (reorg, odd maxpool
    padding, groups routes and sam included), and back again without a trace."""
    cfg, weights, x0 = conformance(case)
    model = load_model(cfg, weights, inference=inference)
    built = load_model(cfg, weights, size=other, inference=inference)
    x = torch.rand(2, 3, other[1], other[0], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model.layer_outputs(torch.from_numpy(x0))
        assert model.resize(*other) is model
        assert (model.network.net.width, model.network.net.height) == other
        for i, (a, b) in enumerate(zip(model.layer_outputs(x), built.layer_outputs(x))):
            assert a.shape == b.shape and torch.equal(a, b), f"layer {i}"
        wrong = rf"expected \(batch, 3, {other[1]}, {other[0]}\)"
        with pytest.raises(NetsurgeryError, match=wrong):
            model.layer_outputs(torch.from_numpy(x0))
        model.resize(x0.shape[3], x0.shape[2])
        after = model.layer_outputs(torch.from_numpy(x0))
    for i, (a, b) in enumerate(zip(before, after)):
        assert torch.equal(a, b), f"layer {i} after resizing back"


def test_resize_refuses_size_dependent_weights():
    cfg, weights, _ = conformance("cov-cls-64")
    model = load_model(cfg, weights)
    with pytest.raises(NetsurgeryError, match=r"layer \d+ \[connected\] has weights for a "
                                              r"64x64 input; it cannot run at 96x96"):
        model.resize(96, 96)
    assert model.network.net.width == 64  # refused: nothing changed


def test_a_size_that_breaks_the_shapes_is_named(tiny64):
    from netsurgery.errors import CfgError

    model, _ = tiny64
    with pytest.raises(CfgError, match=r"route needs equal sizes \(with the input at 100x100, "
                                       r"not the cfg's 416x416; YOLO networks need multiples"):
        model.resize(100, 100)
    assert model.network.net.width == 64  # refused: the model keeps its size
