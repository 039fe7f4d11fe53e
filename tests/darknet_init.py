"""Darknet's random initialisation, reproduced bit for bit, to rebuild a conformance case's
``net.weights`` from the small part that is vendored (tests/data/README.md).

Darknet (AlexeyAB, Linux) draws every [convolutional] and [connected] weight as
``scale * rand_uniform(-1, 1)`` from glibc's ``rand()`` while it parses the cfg:
``scale = sqrt(2 / (size*size*c/groups))`` for a convolution, ``sqrt(2 / inputs)`` for a
connected layer, ``rand_uniform = (float)rand() / RAND_MAX * (max - min) + min`` in float32.
``make_yolo_layer`` ends with ``srand(time(0))``, so the layers after a [yolo] draw from a
stream seeded with the clock of that run. Biases and BatchNorm statistics were perturbed by
the harness and are stored as they are; only the drawn weight matrices are regenerated.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from netsurgery.darknet.network import build_network
from netsurgery.darknet.weights import file_layout, load_weights

_DEGREE, _SEPARATION, _WARMUP = 31, 3, 344  # glibc's TYPE_3 additive generator
_MASK = np.uint64(0xFFFFFFFF)
DRAWN = {"convolutional", "connected"}  # layer types whose "weights" Darknet draws


def _first_state(seed: int) -> list[int]:
    """glibc ``srandom_r``: the 31 words of state after the warm-up, as uint32."""
    word = seed & 0xFFFFFFFF or 1
    state = [word]
    word = word - (1 << 32) if word >= 1 << 31 else word  # the seed as a C int
    for _ in range(1, _DEGREE):
        hi = int(word / 127773)  # C division truncates toward zero
        word = 16807 * (word - hi * 127773) - 2836 * hi
        word += 2147483647 if word < 0 else 0
        state.append(word & 0xFFFFFFFF)
    state += state[:_SEPARATION]
    while len(state) < _WARMUP + _DEGREE:
        state.append((state[-_DEGREE] + state[-_SEPARATION]) & 0xFFFFFFFF)
    return state[_WARMUP:]


def glibc_rand(seed: int, n: int, block: int = 1024) -> np.ndarray:
    """The first ``n`` values of glibc's ``rand()`` after ``srand(seed)``, as int64.

    r[i] = r[i-31] + r[i-3] (mod 2^32), rand() = r >> 1. The next 31 words are a linear map
    of the last 31, so ``block`` groups of 31 come from one integer matrix product (uint64
    wraps modulo 2^64, which keeps every result exact modulo 2^32)."""
    step = [np.eye(_DEGREE, dtype=np.uint64)[k] for k in range(_DEGREE)]
    for k in range(_DEGREE, 2 * _DEGREE):
        step.append((step[k - _DEGREE] + step[k - _SEPARATION]) & _MASK)
    step_matrix = np.stack(step[_DEGREE:])
    powers = [np.eye(_DEGREE, dtype=np.uint64)]
    for _ in range(block - 1):
        powers.append((step_matrix @ powers[-1]) & _MASK)
    stacked = np.stack(powers).reshape(block * _DEGREE, _DEGREE)
    state = np.array(_first_state(seed), dtype=np.uint64)
    chunks, done = [], 0
    while done < n:
        chunk = ((stacked @ state) & _MASK).reshape(block, _DEGREE)
        chunks.append(chunk.ravel())
        done += chunk.size
        state = (step_matrix @ chunk[-1]) & _MASK
    return (np.concatenate(chunks)[:n] >> np.uint64(1)).astype(np.int64)


def _scale(spec) -> np.float32:
    if spec.type_name == "convolutional":
        size, groups = spec.section.get_int("size", 1), spec.section.get_int("groups", 1)
        return np.float32(math.sqrt(2.0 / (size * size * spec.in_shape.as_list()[0] // groups)))
    return np.float32(math.sqrt(2.0 / math.prod(spec.in_shape.as_list())))


def drawn_weights(raw: np.ndarray, scale: np.float32) -> np.ndarray:
    """``scale * rand_uniform(-1, 1)`` in float32, from rand() values."""
    uniform = raw.astype(np.float32) / np.float32(2147483647) * np.float32(2) + np.float32(-1)
    return scale * uniform


def stored_part(cfg: Path, weights: Path, seeds: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """What to vendor: the header, every array Darknet did not draw, and the seeds
    ((first layer, seed) pairs); checks that the drawn arrays are what the seeds give."""
    network = build_network(cfg)
    wf = load_weights(weights, network.layers)
    part = {"header": np.frombuffer(wf.header.to_bytes(), np.uint8),
            "seeds": np.array(seeds, dtype=np.int64)}
    drawn = _drawn_arrays(network, seeds)
    for index, lw in wf.layers.items():
        for name, array in lw.arrays.items():
            if (index, name) in drawn:
                assert np.array_equal(drawn[index, name].view(np.uint32),
                                      np.asarray(array).ravel().view(np.uint32)), index
            else:
                part[f"layer_{index:03d}.{name}"] = np.asarray(array).ravel().copy()
    return part


def _drawn_arrays(network, seeds) -> dict[tuple[int, str], np.ndarray]:
    """(layer, "weights") → the float32 values Darknet drew, in file order."""
    drawn_specs = [(spec, arrays) for spec, arrays in file_layout(network.layers)
                   if spec.type_name in DRAWN]
    out: dict[tuple[int, str], np.ndarray] = {}
    bounds = [first for first, _ in seeds[1:]] + [len(network.layers)]
    for (first, seed), end in zip(seeds, bounds):
        group = [(s, a) for s, a in drawn_specs if first <= s.index < end]
        counts = [next(w.count for w in a if w.name == "weights") for _, a in group]
        raw = glibc_rand(seed, sum(counts))
        at = 0
        for (spec, _), count in zip(group, counts):
            out[spec.index, "weights"] = drawn_weights(raw[at:at + count], _scale(spec))
            at += count
    return out


def rebuild_weights(cfg: Path, part: dict[str, np.ndarray], sha256: str) -> bytes:
    """The original ``net.weights`` bytes from ``stored_part``'s output; checked by sha256."""
    network = build_network(cfg)
    seeds = [tuple(int(v) for v in row) for row in part["seeds"]]
    drawn = _drawn_arrays(network, seeds)
    pieces = [part["header"].tobytes()]
    for spec, arrays in file_layout(network.layers):
        for array in arrays:
            key = (spec.index, array.name)
            values = drawn[key] if key in drawn else part[f"layer_{spec.index:03d}.{array.name}"]
            pieces.append(np.asarray(values, dtype="<f4").tobytes())
    data = b"".join(pieces)
    got = hashlib.sha256(data).hexdigest()
    assert got == sha256, f"rebuilt weights of {cfg} have sha256 {got}, Darknet's {sha256}"
    return data
