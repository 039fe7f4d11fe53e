"""Darknet .weights binary <-> per-layer numpy arrays.

Layout (AlexeyAB's load_weights_upto / save_weights_upto): an int32 header (major, minor,
revision), ``seen`` as uint64 when major·10+minor ≥ 2 else uint32, then float32 arrays in layer
order for the layers that carry weights. A file may stop after any layer (``darknet partial``);
the cut-off follows from the byte count alone. Files are memory-mapped, so a layer's arrays
are views into the file until someone copies them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from netsurgery.errors import WeightsError
from netsurgery.fileio import atomic_open, regular_file_size

from .layers import LayerSpec


@dataclass
class WeightsHeader:
    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def seen_bytes(self) -> int:
        return 8 if self.major * 10 + self.minor >= 2 else 4

    @property
    def size(self) -> int:
        return 12 + self.seen_bytes

    @property
    def transposed(self) -> bool:
        """[connected] matrices stored (inputs, outputs) instead of (outputs, inputs)."""
        return self.major > 1000 or self.minor > 1000

    def to_bytes(self) -> bytes:
        for name in ("major", "minor", "revision"):
            value = getattr(self, name)
            if not 0 <= value < 2**31:
                raise WeightsError(f"header {name}={value} does not fit a .weights header "
                                   "(expected 0..2147483647)")
        if not 0 <= self.seen < 2**(8 * self.seen_bytes):
            raise WeightsError(f"header seen={self.seen} does not fit the {self.seen_bytes}-byte "
                               f"counter of a version {self.version()} header")
        ints = np.array([self.major, self.minor, self.revision], dtype="<i4").tobytes()
        seen = np.array([self.seen], dtype="<u8" if self.seen_bytes == 8 else "<u4")
        return ints + seen.tobytes()

    def version(self) -> str:
        return f"{self.major}.{self.minor}.{self.revision}"


@dataclass
class LayerWeights:
    """The arrays of one layer, in file order, with their byte offset in the file."""

    index: int
    type: str
    arrays: dict[str, np.ndarray]
    offset: int = 0

    @property
    def nbytes(self) -> int:
        return sum(a.size * 4 for a in self.arrays.values())


@dataclass
class WeightsFile:
    """A .weights file read against a network.

    ``layers`` maps layer index → arrays for every layer with weights that the file covers;
    ``covered`` is how many leading layers the file provides (all of them for a full file)."""

    path: str | None
    header: WeightsHeader
    layers: dict[int, LayerWeights]
    covered: int
    n_layers: int
    file_size: int = 0
    notes: list[str] = field(default_factory=list)
    mapped: bool = False  # arrays are views of the file at ``path`` (load_weights)

    @property
    def complete(self) -> bool:
        return self.covered >= self.n_layers

    def describe_coverage(self) -> str:
        if self.complete:
            return f"{self.path}: weights for all {self.n_layers} layers"
        return (f"{self.path}: weights for layers 0..{self.covered - 1} ({self.covered} of "
                f"{self.n_layers} layers); layers {self.covered}.. keep their initial values")


def read_header(data: bytes | np.ndarray, path: str | None = None) -> WeightsHeader:
    """Parse the header at the start of ``data``."""
    buf = memoryview(data)
    if len(buf) < 16:
        raise WeightsError(f"{path}: {len(buf)} bytes is too short for a Darknet .weights "
                           "header (expected at least 16)")
    major, minor, revision = np.frombuffer(buf[:12], dtype="<i4").tolist()
    if min(major, minor, revision) < 0:
        raise WeightsError(f"{path}: header version {major}.{minor}.{revision} is negative: "
                           "not a Darknet .weights file")
    header = WeightsHeader(major, minor, revision, 0)
    if len(buf) < header.size:
        raise WeightsError(f"{path}: {len(buf)} bytes is too short for a version "
                           f"{header.version()} header (expected {header.size})")
    dtype = "<u8" if header.seen_bytes == 8 else "<u4"
    header.seen = int(np.frombuffer(buf[12:header.size], dtype=dtype)[0])
    return header


def file_layout(layers: Iterable[LayerSpec], transposed: bool = False):
    """Yield (layer spec, [WeightArray ...]) for every layer that stores arrays in the file."""
    for spec in layers:
        if spec.section.get_int("dontload", 0):
            continue  # Darknet skips such layers when reading: they take no bytes
        arrays = spec.weight_arrays(transposed)
        if arrays:
            yield spec, arrays


def expected_size(layers: Iterable[LayerSpec], header: WeightsHeader | None = None) -> int:
    header = header or WeightsHeader()
    return header.size + 4 * sum(a.count for _, arrays in file_layout(layers, header.transposed)
                                 for a in arrays)


def load_weights(path: str | os.PathLike, layers: list[LayerSpec],
                 allow_partial: bool = True) -> WeightsFile:
    """Read ``path`` against the layer specs of a network (memory-mapped, no copy).

    A file ending exactly between two layers is a partial file (like darknet53.conv.74): the
    layers before the cut load. A file ending inside a layer, or longer than the network
    needs, is an error naming the layer and the byte counts."""
    p = Path(path)
    try:
        if p.is_dir():
            raise WeightsError(f"{p}: is a folder, expected a .weights file")
        size = regular_file_size(p, "weights")  # a FIFO would block, /dev/zero never ends
        with open(p, "rb") as handle:
            head = handle.read(20)
    except FileNotFoundError:
        raise WeightsError(f"{p}: file not found") from None
    except OSError as exc:  # permissions, a file in place of a folder, I/O errors
        raise WeightsError(f"{p}: cannot read: {exc.strerror or exc}") from None
    header = read_header(head, str(p))
    # mode "c": copy-on-write, so views are writable for torch without touching the file
    data = np.memmap(p, dtype=np.uint8, mode="c") if size > 0 else np.zeros(0, np.uint8)
    wf = _read_layers(data, header, layers, str(p), allow_partial)
    wf.mapped = size > 0
    return wf


def load_weights_bytes(data: bytes, layers: list[LayerSpec], path: str | None = None,
                       allow_partial: bool = True) -> WeightsFile:
    """Like :func:`load_weights` for an in-memory buffer."""
    header = read_header(data, path)
    return _read_layers(np.frombuffer(data, dtype=np.uint8), header, layers, path, allow_partial)


def _read_layers(data: np.ndarray, header: WeightsHeader, layers: list[LayerSpec],
                 path: str | None, allow_partial: bool) -> WeightsFile:
    size = len(data)
    offset = header.size
    out: dict[int, LayerWeights] = {}
    covered = len(layers)
    for spec, arrays in file_layout(layers, header.transposed):
        if offset == size:  # clean cut between layers
            covered = spec.index
            break
        need = 4 * sum(a.count for a in arrays)
        if offset + need > size:
            raise WeightsError(
                f"{path}: ends inside layer {spec.index} [{spec.section.header}]: its weights "
                f"need {need} bytes from offset {offset}, only {size - offset} are left "
                f"(file is {size} bytes; truncated download, or a cfg that does not match?)")
        named: dict[str, np.ndarray] = {}
        pos = offset
        for arr in arrays:
            view = data[pos:pos + 4 * arr.count].view("<f4").reshape(arr.shape)
            named[arr.name] = view
            pos += 4 * arr.count
        out[spec.index] = LayerWeights(spec.index, spec.type_name, named, offset)
        offset = pos
    if offset < size:
        full = expected_size(layers, header)
        last = max(out) if out else None
        raise WeightsError(
            f"{path}: {size - offset} bytes left over after the last layer with weights "
            f"(layer {last}): the cfg needs {full} bytes, the file has {size} — does the cfg "
            "match these weights?")
    notes = []
    if covered < len(layers):
        if not allow_partial:
            held = f"layers 0..{covered - 1}" if covered else "no layers (header only)"
            raise WeightsError(f"{path}: holds weights for {held} only, "
                               f"expected all {len(layers)} layers")
        if covered == 0:
            notes.append(f"no layer weights: the file holds only the header; all "
                         f"{len(layers)} layers keep their initial values")
        else:
            notes.append(f"partial weights: layers 0..{covered - 1} of {len(layers)} "
                         f"(the file stops after layer {covered - 1})")
    return WeightsFile(path, header, out, covered, len(layers), size, notes)


def read_arrays_into(wf: WeightsFile, out: Mapping[int, Mapping[str, np.ndarray]]) -> None:
    """Fill ``out[index][name]`` with the file's arrays (each destination a C-contiguous
    float32 array of the same size; missing entries are skipped).

    For a file read by :func:`load_weights` the bytes go straight from the file into the
    destination with ``readinto`` — one copy, at the speed of reading the file, and no mapped
    pages left resident beside the destination (touching the memory map would add the file's
    size to the process's memory). Otherwise they are copied from the in-memory views."""
    native = np.dtype("<f4")
    for index, named in out.items():
        for name, dest in named.items():
            src = wf.layers[index].arrays[name]
            if dest.dtype != native or not dest.flags.c_contiguous or dest.size != src.size:
                raise WeightsError(f"layer {index} '{name}': destination of {dest.size} "
                                   f"{dest.dtype} values, expected {src.size} contiguous "
                                   "float32")
    if not (wf.mapped and wf.path):
        for index, named in out.items():
            for name, dest in named.items():
                np.copyto(dest.reshape(-1), wf.layers[index].arrays[name].reshape(-1))
        return
    with open(wf.path, "rb", buffering=0) as handle:
        for index in sorted(out):
            lw = wf.layers[index]
            pos = lw.offset
            for name, src in lw.arrays.items():
                dest = out[index].get(name)
                if dest is not None:
                    handle.seek(pos)
                    view = memoryview(dest.reshape(-1)).cast("B")
                    got = handle.readinto(view)
                    while got < len(view):  # short reads (pipes, network filesystems)
                        more = handle.readinto(view[got:])
                        if not more:
                            raise WeightsError(f"{wf.path}: ended while reading layer "
                                               f"{index} '{name}' (file changed on disk?)")
                        got += more
                pos += 4 * src.size


def weights_bytes(header: WeightsHeader, layers: list[LayerSpec],
                  arrays: Mapping[int, Mapping[str, np.ndarray]], upto: int | None = None):
    """Yield the file's bytes chunk by chunk: header, then each layer's arrays in file order
    for layers ``< upto`` (all by default). ``arrays[index][name]`` must hold every array."""
    yield header.to_bytes()
    limit = len(layers) if upto is None else upto
    for spec, wanted in file_layout(layers[:limit], header.transposed):
        got = arrays.get(spec.index)
        if got is None:
            raise WeightsError(f"layer {spec.index} [{spec.section.header}]: no weights to save")
        for arr in wanted:
            value = got.get(arr.name)
            if value is None:
                raise WeightsError(f"layer {spec.index}: array '{arr.name}' missing")
            value = np.asarray(value, dtype="<f4")
            if value.size != arr.count:
                raise WeightsError(f"layer {spec.index}: array '{arr.name}' has {value.size} "
                                   f"values, expected {arr.count} {arr.shape}")
            yield np.ascontiguousarray(value).tobytes()


def save_weights(path: str | os.PathLike, header: WeightsHeader, layers: list[LayerSpec],
                 arrays: Mapping[int, Mapping[str, np.ndarray]], upto: int | None = None) -> None:
    """Write a .weights file atomically (temporary file, then rename)."""
    with atomic_open(path, "wb") as handle:
        for chunk in weights_bytes(header, layers, arrays, upto):
            handle.write(chunk)


def layer_arrays(wf: WeightsFile) -> dict[int, dict[str, np.ndarray]]:
    return {i: lw.arrays for i, lw in wf.layers.items()}


def nonfinite_report(wf: WeightsFile) -> list[tuple[int, str, int]]:
    """(layer index, array name, count) for every array holding NaN or Inf."""
    bad = []
    for index, lw in sorted(wf.layers.items()):
        for name, arr in lw.arrays.items():
            n = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if n:
                bad.append((index, name, n))
    return bad


def random_arrays(layers: Iterable[LayerSpec], seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Plausible random weights for every layer that carries arrays (for tests, benchmarks
    and examples): He-scaled kernels, BatchNorm statistics near the identity with positive
    variances, small biases — activations stay finite through deep networks."""
    rng = np.random.default_rng(seed)
    arrays: dict[int, dict[str, np.ndarray]] = {}
    for spec in layers:
        wanted = spec.weight_arrays()
        if not wanted:
            continue
        out = {}
        for arr in wanted:
            n = arr.count
            kind = arr.name.rsplit(".", 1)[-1]  # sub-layers: "input_layer.weights"
            if kind == "weights":
                fan_in = max(1, n // arr.shape[0])
                v = rng.standard_normal(n, dtype=np.float32) * np.float32(np.sqrt(1.0 / fan_in))
            elif kind == "scales":
                v = rng.uniform(0.5, 1.0, n).astype(np.float32)
            elif kind == "rolling_mean":
                v = (rng.standard_normal(n) * 0.1).astype(np.float32)
            elif kind == "rolling_variance":
                v = rng.uniform(0.5, 1.5, n).astype(np.float32)
            else:  # biases
                v = (rng.standard_normal(n) * 0.01).astype(np.float32)
            out[arr.name] = v.reshape(arr.shape)
        arrays[spec.index] = out
    return arrays
