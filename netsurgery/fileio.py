"""Atomic output files: write to a temporary file in the same folder, then rename into place,
so an interrupted run never leaves a half-written output and never touches an input."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterable, Iterator

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
    if out.is_dir():  # even with --overwrite: renaming a file onto a folder fails late
        raise UsageError(f"{out}: is a folder, expected the path of an output file")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: exists already; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is renamed to ``path``.

    On any exception (KeyboardInterrupt and SystemExit from signals included) the temporary
    file is removed and ``path`` is left as it was."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, no permission, read-only disk
        raise UsageError(f"{target}: cannot write here: {exc.strerror or exc}") from None
    # The name is chosen before the file exists, so that a signal arriving at any point
    # after its creation (even before open() returns) finds the name to remove.
    # (tempfile.mkstemp creates the file before we learn its name.)
    tmp = ""
    try:
        while True:
            tmp = str(target.parent / f".{target.name}.{secrets.token_hex(4)}.part")
            try:
                # 0o666 & ~umask: the mode any other new output file gets
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise UsageError(f"{target}: cannot write here: {exc.strerror or exc}") \
                    from None
        # Text is UTF-8 whatever the locale; surrogateescape writes back the undecodable bytes
        # a cfg comment was read with.
        text_args = {} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape"}
        with os.fdopen(fd, mode, **text_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def staged_outputs(paths: Iterable[str | os.PathLike]) -> Iterator[list[Path]]:
    """Outputs that belong together (cfg + weights + heads file): yields temporary paths
    beside the targets; only when the block succeeds are they all renamed into place, so an
    interrupted run leaves none of them rather than some without their partners."""
    targets = [Path(p) for p in paths]
    staged = [t.parent / f".{t.name}.{secrets.token_hex(4)}.staged" for t in targets]
    try:
        yield staged
        for tmp, target in zip(staged, targets):
            if not tmp.exists():
                raise RuntimeError(f"staged output {target} was not written")
        for tmp, target in zip(staged, targets):
            os.replace(tmp, target)
    except BaseException:
        for tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
