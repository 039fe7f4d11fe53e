"""The layer types beyond YOLO's ([rnn] [gru] [lstm] [crnn] [conv_lstm] [history] [local]
[crop] [detection] [Gaussian_yolo] [normalization] [implicit] [contrastive]): each forward
pass against a literal numpy transcription of Darknet's C loops (AlexeyAB's *_layer.c, CPU
path, inference) on random inputs and weights, and each .weights layout through a byte
identical save/load round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from netsurgery import build_network, load_model, parse_cfg_text
from netsurgery.darknet.weights import WeightsHeader, random_arrays, save_weights

TOL = dict(rtol=1e-5, atol=1e-5)


# =============================================================================================
# Darknet's C building blocks, transcribed (blas.c, activations.c, im2col.c, gemm.c)
# =============================================================================================
def activate(name: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    if name == "linear":
        return x
    if name == "logistic":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "loggy":
        return 2.0 / (1.0 + np.exp(-x)) - 1
    if name == "leaky":
        return np.where(x > 0, x, 0.1 * x)
    if name == "tanh":
        return (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1)
    raise AssertionError(name)


def normalize_scale_bias(out, mean, variance, scales, biases, spatial: int):
    """normalize_cpu (x - mean)/(sqrt(var) + .000001f), scale_bias, add_bias; out is
    [filters * spatial] for one batch item."""
    out = out.copy()
    for f in range(len(biases)):
        for i in range(spatial):
            index = f * spatial + i
            if mean is not None:
                out[index] = (out[index] - mean[f]) / (np.sqrt(variance[f]) + .000001)
                out[index] *= scales[f]
            out[index] += biases[f]
    return out


def connected(x, a, act: str, bn: bool):
    """forward_connected_layer for one input vector: gemm(0,1,...) then BN/bias, activate."""
    out = np.array([np.dot(x, a["weights"][o]) for o in range(len(a["biases"]))])
    if bn:
        out = normalize_scale_bias(out, a["rolling_mean"], a["rolling_variance"],
                                   a["scales"], a["biases"], 1)
    else:
        out = normalize_scale_bias(out, None, None, None, a["biases"], 1)
    return activate(act, out)


def im2col(data, channels, height, width, ksize, stride, pad):
    """im2col_cpu: col[(c*ksize + kh)*ksize + kw][h_out][w_out]."""
    height_col = (height + 2 * pad - ksize) // stride + 1
    width_col = (width + 2 * pad - ksize) // stride + 1
    channels_col = channels * ksize * ksize
    col = np.zeros(channels_col * height_col * width_col)
    for c in range(channels_col):
        w_offset = c % ksize
        h_offset = (c // ksize) % ksize
        c_im = c // ksize // ksize
        for h in range(height_col):
            for w in range(width_col):
                im_row = h_offset + h * stride - pad
                im_col = w_offset + w * stride - pad
                value = 0.0
                if 0 <= im_row < height and 0 <= im_col < width:
                    value = data[im_col + width * (im_row + height * c_im)]
                col[(c * height_col + h) * width_col + w] = value
    return col.reshape(channels_col, height_col * width_col), height_col, width_col


def convolution(x, c, h, w, a, size, pad, act: str, bn: bool):
    """forward_convolutional_layer (groups=1, unfused): im2col, gemm, BN or bias, activate."""
    col, oh, ow = im2col(x, c, h, w, size, 1, pad)
    n = len(a["biases"])
    out = (a["weights"].reshape(n, -1) @ col).reshape(-1)
    if bn:
        out = normalize_scale_bias(out, a["rolling_mean"], a["rolling_variance"],
                                   a["scales"], a["biases"], oh * ow)
    else:
        out = normalize_scale_bias(out, None, None, None, a["biases"], oh * ow)
    return activate(act, out)


def softmax(x):
    """blas.c softmax with temp 1: exp(x - largest) / sum."""
    e = np.exp(x - x.max())
    return e / e.sum()


# =============================================================================================
# Helpers
# =============================================================================================
NET = "[net]\nwidth={w}\nheight={h}\nchannels={c}\n"


def model_with_random_weights(text: str, tmp_path, seed: int = 0):
    """The model of ``text`` loaded from a .weights file of random arrays; checks that
    saving it again gives the same bytes. Returns (model, arrays by layer)."""
    network = build_network(parse_cfg_text(text, str(tmp_path / "t.cfg")))
    arrays = random_arrays(network.layers, seed)
    first = tmp_path / "a.weights"
    save_weights(first, WeightsHeader(), network.layers, arrays)
    model = load_model(network, first)
    second = tmp_path / "b.weights"
    model.save_weights(second)
    assert first.read_bytes() == second.read_bytes()
    size = sum(a.count for spec in network.layers for a in spec.weight_arrays())
    assert len(first.read_bytes()) == 20 + 4 * size
    flat = {i: {k: v.astype(np.float64) for k, v in named.items()} for i, named in arrays.items()}
    return model, flat


def sub(arrays: dict, prefix: str) -> dict:
    return {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def run(model, x: np.ndarray, layer: int) -> np.ndarray:
    with torch.no_grad():
        return model.run(torch.from_numpy(x.astype(np.float32)), [layer])[layer].numpy()


# =============================================================================================
# Recurrent layers: two successive calls (the state carries over)
# =============================================================================================
@pytest.mark.parametrize("bn", [0, 1])
@pytest.mark.parametrize("shortcut,logistic", [(0, 0), (1, 1)])
def test_rnn_matches_darknet(tmp_path, bn, shortcut, logistic):
    text = NET.format(w=1, h=1, c=6) + (
        f"[rnn]\nbatch_normalize={bn}\noutput=5\nhidden=4\nactivation=leaky\n"
        f"shortcut={shortcut}\nlogistic={logistic}\n")
    model, arrays = model_with_random_weights(text, tmp_path)
    a = arrays[0]
    inp, slf, outl = sub(a, "input_layer"), sub(a, "self_layer"), sub(a, "output_layer")
    rng = np.random.default_rng(1)
    state = np.zeros(4)
    for _ in range(2):
        x = rng.standard_normal(6)
        input_out = connected(x, inp, "leaky", bn)
        self_out = connected(state, slf, "logistic" if logistic else "leaky", bn)
        state = (state if shortcut else np.zeros(4)) + input_out + self_out
        expected = connected(state, outl, "leaky", bn)
        got = run(model, x.reshape(1, 6, 1, 1), 0)
        np.testing.assert_allclose(got.reshape(-1), expected, **TOL)


@pytest.mark.parametrize("bn", [0, 1])
def test_gru_matches_darknet(tmp_path, bn):
    text = NET.format(w=1, h=1, c=6) + f"[gru]\nbatch_normalize={bn}\noutput=4\n"
    model, arrays = model_with_random_weights(text, tmp_path, seed=2)
    a = {name: sub(arrays[0], name) for name in
         ("input_z_layer", "input_r_layer", "input_h_layer", "state_z_layer", "state_r_layer",
          "state_h_layer")}
    rng = np.random.default_rng(3)
    state = np.zeros(4)
    for _ in range(2):
        x = rng.standard_normal(6)
        z = activate("logistic", connected(x, a["input_z_layer"], "linear", bn) +
                     connected(state, a["state_z_layer"], "linear", bn))
        r = activate("logistic", connected(x, a["input_r_layer"], "linear", bn) +
                     connected(state, a["state_r_layer"], "linear", bn))
        forgot = state * r
        h = activate("logistic", connected(x, a["input_h_layer"], "linear", bn) +
                     connected(forgot, a["state_h_layer"], "linear", bn))
        state = z * state + (1 - z) * h  # weighted_sum_cpu, then copied into the state
        got = run(model, x.reshape(1, 6, 1, 1), 0)
        np.testing.assert_allclose(got.reshape(-1), state, **TOL)


@pytest.mark.parametrize("bn", [0, 1])
def test_lstm_matches_darknet(tmp_path, bn):
    text = NET.format(w=1, h=1, c=5) + f"[lstm]\nbatch_normalize={bn}\noutput=3\n"
    model, arrays = model_with_random_weights(text, tmp_path, seed=4)
    a = {f"{k}{g}": sub(arrays[0], f"{k}{g}") for k in "wu" for g in "figo"}
    rng = np.random.default_rng(5)
    h, c = np.zeros(3), np.zeros(3)
    for _ in range(3):
        x = rng.standard_normal(5)
        pre = {g: connected(h, a[f"w{g}"], "linear", bn) + connected(x, a[f"u{g}"], "linear", bn)
               for g in "figo"}
        f, i, o = (activate("logistic", pre[g]) for g in "fio")
        g = activate("tanh", pre["g"])
        c = f * c + i * g
        h = o * activate("tanh", c)
        got = run(model, x.reshape(1, 5, 1, 1), 0)
        np.testing.assert_allclose(got.reshape(-1), h, **TOL)


@pytest.mark.parametrize("bn,shortcut", [(0, 0), (1, 1)])
def test_crnn_matches_darknet(tmp_path, bn, shortcut):
    text = NET.format(w=5, h=4, c=2) + (
        f"[crnn]\nbatch_normalize={bn}\nsize=3\npad=1\noutput=3\nhidden=2\n"
        f"activation=leaky\nshortcut={shortcut}\n")
    model, arrays = model_with_random_weights(text, tmp_path, seed=6)
    a = {n: sub(arrays[0], n) for n in ("input_layer", "self_layer", "output_layer")}
    rng = np.random.default_rng(7)
    state = np.zeros(2 * 4 * 5)
    for _ in range(2):
        x = rng.standard_normal(2 * 4 * 5)
        input_out = convolution(x, 2, 4, 5, a["input_layer"], 3, 1, "leaky", bn)
        self_out = convolution(state, 2, 4, 5, a["self_layer"], 3, 1, "leaky", bn)
        state = (state if shortcut else 0) + input_out + self_out
        expected = convolution(state, 2, 4, 5, a["output_layer"], 3, 1, "leaky", bn)
        got = run(model, x.reshape(1, 2, 4, 5), 0)
        np.testing.assert_allclose(got.reshape(-1), expected, **TOL)


@pytest.mark.parametrize("peephole", [0, 1])
def test_conv_lstm_matches_darknet(tmp_path, peephole):
    text = NET.format(w=4, h=3, c=2) + (
        f"[conv_lstm]\nbatch_normalize=1\nsize=3\npad=1\noutput=2\npeephole={peephole}\n"
        "state_constrain=1\n")
    model, arrays = model_with_random_weights(text, tmp_path, seed=8)
    names = ([f"v{g}" for g in "fio"] if peephole else []) + \
        [f"{k}{g}" for k in "wu" for g in "figo"]
    a = {n: sub(arrays[0], n) for n in names}
    rng = np.random.default_rng(9)
    out = 2 * 3 * 4
    h, c = np.zeros(out), np.zeros(out)

    def conv(name, v, channels):
        return convolution(v, channels, 3, 4, a[name], 3, 1, "linear", True)

    for _ in range(3):
        x = rng.standard_normal(2 * 3 * 4)
        f = conv("wf", h, 2) + conv("uf", x, 2) + (conv("vf", c, 2) if peephole else 0)
        i = conv("wi", h, 2) + conv("ui", x, 2) + (conv("vi", c, 2) if peephole else 0)
        g = conv("wg", h, 2) + conv("ug", x, 2)
        f, i, g = activate("logistic", f), activate("logistic", i), activate("tanh", g)
        c = f * c + i * g
        o = conv("wo", h, 2) + conv("uo", x, 2) + (conv("vo", c, 2) if peephole else 0)
        h = activate("logistic", o) * activate("tanh", c)
        c = np.clip(c, -1, 1)  # constrain_cpu with state_constrain=1
        got = run(model, x.reshape(1, 2, 3, 4), 0)
        np.testing.assert_allclose(got.reshape(-1), h, **TOL)


def test_recurrent_layers_refuse_training(tmp_path):
    model, _ = model_with_random_weights(NET.format(w=1, h=1, c=2) + "[rnn]\noutput=2\n",
                                         tmp_path)
    model.train()
    from netsurgery.errors import UsageError

    with pytest.raises(UsageError, match=r"layer 0 \[rnn\]: training recurrent layers is not "
                                         r"supported by netsurgery \(inference only\)"):
        model(torch.zeros(1, 2, 1, 1))


# =============================================================================================
# The other layer types
# =============================================================================================
@pytest.mark.parametrize("pad,size,stride", [(0, 3, 1), (1, 3, 1), (0, 2, 2)])
def test_local_matches_darknet(tmp_path, pad, size, stride):
    text = NET.format(w=6, h=5, c=2) + (
        f"[local]\nfilters=3\nsize={size}\nstride={stride}\npad={pad}\nactivation=leaky\n")
    model, arrays = model_with_random_weights(text, tmp_path, seed=10)
    a = arrays[0]
    x = np.random.default_rng(11).standard_normal(2 * 5 * 6)
    out_h = ((5 - 1) if pad else (5 - size)) // stride + 1
    out_w = ((6 - 1) if pad else (6 - size)) // stride + 1
    locations = out_h * out_w
    output = a["biases"].reshape(-1).copy()  # copy_cpu(l.outputs, l.biases ...)
    col, _, _ = im2col(x, 2, 5, 6, size, stride, pad)
    weights = a["weights"].reshape(-1)
    k = size * size * 2
    for j in range(locations):  # gemm(0,0,n,1,k, a = weights + j*k*n, b = col + j, ldb=L)
        w_j = weights[j * k * 3:(j + 1) * k * 3].reshape(3, k)
        for f in range(3):
            output[f * locations + j] += np.dot(w_j[f], col[:, j])
    got = run(model, x.reshape(1, 2, 5, 6), 0)
    np.testing.assert_allclose(got.reshape(-1), activate("leaky", output), **TOL)


@pytest.mark.parametrize("size", [5, 3, 4])
def test_normalization_matches_darknet(tmp_path, size):
    text = NET.format(w=3, h=2, c=7) + f"[lrn]\nsize={size}\nalpha=0.3\nbeta=0.75\nkappa=2\n"
    model, _ = model_with_random_weights(text, tmp_path)
    x = np.random.default_rng(12).standard_normal(7 * 2 * 3)
    wh, c = 6, 7
    squared = x ** 2
    norms = np.zeros(c * wh)
    norms[:wh] = 2.0  # const_cpu(w*h, kappa, norms)
    for k in range(size // 2):
        norms[:wh] += 0.3 * squared[wh * k:wh * (k + 1)]
    for k in range(1, c):
        norms[wh * k:wh * (k + 1)] = norms[wh * (k - 1):wh * k]
        prev, nxt = k - ((size - 1) // 2) - 1, k + size // 2
        if prev >= 0:
            norms[wh * k:wh * (k + 1)] -= 0.3 * squared[wh * prev:wh * (prev + 1)]
        if nxt < c:
            norms[wh * k:wh * (k + 1)] += 0.3 * squared[wh * nxt:wh * (nxt + 1)]
    expected = norms ** -0.75 * x
    got = run(model, x.reshape(1, 7, 2, 3), 0)
    np.testing.assert_allclose(got.reshape(-1), expected, **TOL)


@pytest.mark.parametrize("noadjust", [0, 1])
def test_crop_matches_darknet(tmp_path, noadjust):
    text = NET.format(w=7, h=6, c=2) + (
        f"[crop]\ncrop_height=3\ncrop_width=4\nflip=1\nangle=7\nnoadjust={noadjust}\n")
    model, _ = model_with_random_weights(text, tmp_path)
    x = np.random.default_rng(13).random(2 * 6 * 7)
    scale, trans = (1, 0) if noadjust else (2, -1)
    dh, dw = (6 - 3) // 2, (7 - 4) // 2  # not training: the centre, no flip
    out = []
    for c in range(2):
        for i in range(3):
            for j in range(4):
                out.append(x[(j + dw) + 7 * ((i + dh) + 6 * c)] * scale + trans)
    got = run(model, x.reshape(1, 2, 6, 7), 0)
    assert got.shape == (1, 2, 3, 4)
    np.testing.assert_allclose(got.reshape(-1), out, **TOL)


@pytest.mark.parametrize("soft", [0, 1])
def test_detection_matches_darknet(tmp_path, soft):
    side, classes, num, coords = 2, 3, 2, 4
    inputs = side * side * ((1 + coords) * num + classes)
    text = NET.format(w=1, h=1, c=inputs) + (
        f"[detection]\nclasses={classes}\ncoords={coords}\nnum={num}\nside={side}\n"
        f"softmax={soft}\n")
    model, _ = model_with_random_weights(text, tmp_path)
    x = np.random.default_rng(14).standard_normal(inputs)
    out = x.copy()  # memcpy, then softmax over each location's classes
    if soft:
        for i in range(side * side):
            out[i * classes:(i + 1) * classes] = softmax(x[i * classes:(i + 1) * classes])
    got = run(model, x.reshape(1, inputs, 1, 1), 0)
    np.testing.assert_allclose(got.reshape(-1), out, **TOL)


@pytest.mark.parametrize("scale", [1.0, 1.2])
def test_gaussian_yolo_matches_darknet(tmp_path, scale):
    classes, n, w, h = 2, 2, 3, 2
    text = NET.format(w=w, h=h, c=n * (classes + 9)) + (
        f"[Gaussian_yolo]\nmask=0,1\nnum=3\nclasses={classes}\nscale_x_y={scale}\n"
        "anchors=1,2,3,4,5,6\n")
    model, _ = model_with_random_weights(text, tmp_path)
    x = np.random.default_rng(15).standard_normal(n * (classes + 9) * w * h)
    out = x.copy()
    wh = w * h

    def entry(a, e):  # entry_gaussian_index(l, 0, a*w*h, e)
        return a * wh * (8 + classes + 1) + e * wh

    for a in range(n):
        for e, count in ((0, 2), (2, 2), (5, 1), (7, 1), (8, 1 + classes)):
            i = entry(a, e)
            out[i:i + count * wh] = activate("logistic", out[i:i + count * wh])
            if e in (0, 2):  # scal_add_cpu on the mean only
                out[i:i + wh] = out[i:i + wh] * scale - 0.5 * (scale - 1)
    got = run(model, x.reshape(1, -1, h, w), 0)
    np.testing.assert_allclose(got.reshape(-1), out, **TOL)


def test_implicit_history_and_contrastive(tmp_path):
    text = NET.format(w=3, h=2, c=2) + (
        "[history]\nhistory_size=3\n"
        "[implicit]\nfilters=4\natoms=2\n")
    model, arrays = model_with_random_weights(text, tmp_path)
    x = np.random.default_rng(16).standard_normal((2, 2, 2, 3))
    with torch.no_grad():
        out = model.run(torch.from_numpy(x.astype(np.float32)), [0, 1])
    history = out[0].numpy()  # steps == 1: copy_cpu(l.inputs) into a zeroed l.outputs
    assert history.shape == (2, 6, 2, 3)
    np.testing.assert_array_equal(history[:, :2], x.astype(np.float32))
    assert not history[:, 2:].any()
    implicit = out[1].numpy()  # output[i] = weights[i % nweights] for every batch item
    assert implicit.shape == (2, 4, 2, 1)
    for b in range(2):
        np.testing.assert_array_equal(implicit[b].reshape(-1),
                                      arrays[1]["weights"].astype(np.float32).reshape(-1))


def test_layer_shapes_and_weights_sizes():
    """Output shapes and .weights sizes by hand from the make_*_layer functions."""
    text = NET.format(w=8, h=8, c=3) + (
        "[local]\nfilters=4\nsize=3\nstride=1\npad=1\n"  # 8x8, 64 locations
        "[crnn]\nsize=3\npad=1\noutput=5\nhidden=6\nbatch_normalize=1\n"
        "[conv_lstm]\nsize=3\npad=1\noutput=2\npeephole=1\n"
        "[history]\nhistory_size=2\n"
        "[connected]\noutput=7\n"
        "[rnn]\noutput=3\nhidden=2\n[gru]\noutput=2\n[lstm]\noutput=2\n"
        "[implicit]\nfilters=5\natoms=3\n")
    net = build_network(parse_cfg_text(text, "s.cfg"))
    shapes = [s.out_shape.as_list() for s in net.layers]
    assert shapes == [[4, 8, 8], [5, 8, 8], [2, 8, 8], [4, 8, 8], [7, 1, 1], [3, 1, 1],
                      [2, 1, 1], [2, 1, 1], [5, 3, 1]]
    params = [s.params for s in net.layers]
    assert params[0] == 4 * 64 + 64 * 4 * 3 * 9
    # input 4->6, self 6->6, output 6->5 convolutions with BN: 4 arrays of filters + kernel
    assert params[1] == (6 * 4 + 6 * 4 * 9) + (6 * 4 + 6 * 6 * 9) + (5 * 4 + 5 * 6 * 9)
    # peephole: vf vi vo, wf wi wg wo (2->2), uf ui ug uo (5->2), no BN: biases + kernel
    assert params[2] == 7 * (2 + 2 * 2 * 9) + 4 * (2 + 2 * 5 * 9)
    assert params[3] == 0
    assert params[5] == (2 + 7 * 2) + (2 + 2 * 2) + (3 + 2 * 3)
    assert params[6] == 3 * (2 + 3 * 2) + 3 * (2 + 2 * 2)
    assert params[7] == 4 * (2 + 2 * 2) + 4 * (2 + 2 * 2)
    assert params[8] == 15
    # BFLOPs: local, recurrent and connected layers count 0 in Darknet; [crnn] its three
    # convolutions; [conv_lstm] its eleven plus 12 per output (peephole)
    assert [s.flops() for s in net.layers[3:]] == [0.0] * 6
    assert net.layers[0].flops() == 0.0
    assert net.layers[1].flops() == 2.0 * 64 * (6 * 4 * 9 + 6 * 6 * 9 + 5 * 6 * 9)
    assert net.layers[2].flops() == 2.0 * 64 * (7 * 2 * 2 * 9 + 4 * 5 * 2 * 9) + 12 * 2 * 64


def test_contrastive_and_errors():
    base = NET.format(w=8, h=8, c=3) + (
        "[convolutional]\nfilters=12\nsize=1\n"  # 0: embeddings, 4 per anchor
        "[convolutional]\nfilters=18\nsize=1\n"  # 1
        "[yolo]\nmask=0,1,2\nnum=3\nclasses=1\nembedding_layer=-2\n"  # 2
        "[route]\nlayers=0\n")  # 3
    net = build_network(parse_cfg_text(base + "[contrastive]\nyolo_layer=-2\n", "c.cfg"))
    assert net.layers[4].yolo_layer == 2 and net.layers[4].out_shape.as_list() == [12, 8, 8]
    with pytest.raises(Exception, match=r"c\.cfg:\d+: \[contrastive\] layer 4: yolo_layer=-1 "
                                         r"points at layer 3 \[route\]: expected a \[yolo\]"):
        build_network(parse_cfg_text(base + "[contrastive]\nyolo_layer=-1\n", "c.cfg"))
    with pytest.raises(Exception, match=r"\[crop\] layer 0: crop 9x4 is larger than the 8x8"):
        build_network(parse_cfg_text(NET.format(w=8, h=8, c=3) +
                                     "[crop]\ncrop_height=9\ncrop_width=4\n", "c.cfg"))
    with pytest.raises(Exception, match=r"\[detection\] layer 0: input has 3 values: expected "
                                        r"side²·\(\(1\+coords\)·num \+ classes\) = 2²"):
        build_network(parse_cfg_text(NET.format(w=1, h=1, c=3) + "[detection]\nside=2\n",
                                     "c.cfg"))
    with pytest.raises(Exception, match=r"\[local\] layer 0: pad=1 with size=5"):
        build_network(parse_cfg_text(NET.format(w=8, h=8, c=3) +
                                     "[local]\nsize=5\npad=1\n", "c.cfg"))
    with pytest.raises(Exception, match=r"\[crnn\] layer 0: size=3, stride=1, padding=0 turn "
                                        r"the 8x8 input into 6x6"):
        build_network(parse_cfg_text(NET.format(w=8, h=8, c=3) + "[crnn]\n", "c.cfg"))


def test_partial_and_diff_handle_the_new_layer_types(tmp_path):
    """``partial`` cuts between layers with sub-layers; ``diff`` compares their arrays."""
    from netsurgery.analysis.diff import diff_weights
    from netsurgery.surgery.partial import write_partial

    text = NET.format(w=4, h=4, c=2) + (
        "[crnn]\nsize=3\npad=1\noutput=2\nhidden=3\nbatch_normalize=1\n"
        "[local]\nfilters=2\nsize=3\npad=1\n"
        "[connected]\noutput=5\n[lstm]\noutput=3\n[implicit]\nfilters=2\n")
    cfg = tmp_path / "n.cfg"
    cfg.write_text(text)
    network = build_network(cfg)
    full = tmp_path / "full.weights"
    save_weights(full, WeightsHeader(), network.layers, random_arrays(network.layers, 3))
    cut = tmp_path / "cut.weights"
    write_partial(cfg, full, cut, 2)
    expected = 20 + 4 * sum(s.params for s in network.layers[:2])
    assert cut.read_bytes() == full.read_bytes()[:expected]
    other = tmp_path / "other.weights"
    save_weights(other, WeightsHeader(), network.layers, random_arrays(network.layers, 4))
    report = diff_weights(cfg, full, cfg, other)
    assert [layer.index for layer in report.layers] == [0, 1, 2, 3, 4]
    assert list(report.layers[0].tensors)[:5] == [
        "input_layer.biases", "input_layer.scales", "input_layer.rolling_mean",
        "input_layer.rolling_variance", "input_layer.weights"]
    assert not any(layer.identical for layer in report.layers)
    same = diff_weights(cfg, full, cfg, full)
    assert all(layer.identical for layer in same.layers)


def test_contrastive_yolo_layer_is_a_renumbered_reference():
    text = NET.format(w=8, h=8, c=3) + (
        "[convolutional]\nfilters=12\nsize=1\n[convolutional]\nfilters=18\nsize=1\n"
        "[yolo]\nmask=0,1,2\nnum=3\nclasses=1\nembedding_layer=-2\n[route]\nlayers=0\n"
        "[contrastive]\nyolo_layer=2\n")
    spec = build_network(parse_cfg_text(text, "c.cfg")).layers[4]
    assert spec.references() == [2]
    assert spec.renumbered(6, lambda i: i + 2).get_int("yolo_layer") == 4  # absolute stays so
