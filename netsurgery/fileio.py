"""Atomic output files: write to a temporary file in the same folder, then rename into place,
so an interrupted run never leaves a half-written output and never touches an input."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Iterable

from .errors import UsageError


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                 overwrite: bool = False) -> Path:
    """Refuse an output path that equals an input, or that exists without ``overwrite``."""
    out = Path(path)
    for inp in inputs:
        if inp is None:
            continue
        if Path(inp).exists() and out.exists() and os.path.samefile(out, inp):
            raise UsageError(f"{out}: output would overwrite the input {inp}; choose another path")
        if out.resolve() == Path(inp).resolve():
            raise UsageError(f"{out}: output would overwrite the input {inp}; choose another path")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: exists already; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is renamed to ``path``.

    On any exception (KeyboardInterrupt and SystemExit from signals included) the temporary
    file is removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)
