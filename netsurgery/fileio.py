"""Files in and out.

Outputs: written to a temporary file in the same folder, then renamed into place, so an
interrupted run never leaves a half-written output. Temporary names carry the writer's process
id, so the leftovers of a killed run (``SIGKILL`` cannot be caught) are removed by the next run
that writes the same output.

The output guard: a command declares its inputs — including the kinds of input that lead to
more files (a ``.data`` file names lists and a names file, an image list names images and
label files, a heads file names class-name files) — and no output may resolve to any of them,
even with ``--overwrite``.

Inputs: cfg and weights readers open only regular files of a bounded size, so a FIFO or
``/dev/zero`` given by mistake is refused instead of blocking or filling the memory.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Union

from .errors import NetsurgeryError, UsageError

# -- inputs that lead to more files --------------------------------------------------------


@dataclass(frozen=True)
class DataInput:
    """A Darknet ``.data`` file: also its train/valid lists (with their images and label
    files), names and difficult files."""

    path: str | os.PathLike


@dataclass(frozen=True)
class ListInput:
    """An image list: also every image it names and that image's label file."""

    path: str | os.PathLike


@dataclass(frozen=True)
class HeadsInput:
    """A merged network's heads file: also the class-name files it names."""

    path: str | os.PathLike


@dataclass(frozen=True)
class ImagesInput:
    """An image argument of ``detect``: a file, a folder of images or a ``.txt`` list."""

    path: str | os.PathLike


InputLike = Union[str, os.PathLike, DataInput, ListInput, HeadsInput, ImagesInput, None]


def _list_files(path: Path) -> list[str]:
    """The list, each image it names and that image's label file. Strings, not Paths, and both
    spellings a relative entry may mean (cwd, the list's folder): a list of 100,000 images is
    read in well under a second."""
    from netsurgery.training.data import label_path_str

    folder = os.path.dirname(os.path.abspath(path))
    text = read_input_bytes(path, "image list").decode("utf-8-sig", "surrogateescape")
    out = [str(path)]
    for line in text.splitlines():
        entry = line.strip()
        if not entry:
            continue
        for image in {entry, os.path.join(folder, entry)}:
            out += [image, label_path_str(image)]
    return out


def _data_files(path: Path) -> list[str | Path]:
    from netsurgery.training.data import load_data_file

    data = load_data_file(path)
    out = [path]
    for key in ("names", "difficult"):
        if getattr(data, key) is not None:
            out.append(getattr(data, key))
    for value in {data.train, data.valid} - {None}:  # often one list for both
        out += _list_files(value) if value.is_file() else [value]
    return out


def _heads_files(path: Path) -> list[Path]:
    import json

    out = [path]
    data = json.loads(path.read_text(encoding="utf-8"))

    def walk(node):  # every "names_file" anywhere: as written and relative to the heads file
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "names_file" and isinstance(value, str):
                    out.extend([Path(value), path.parent / value])
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return out


def _image_files(path: Path) -> list[Path]:
    from netsurgery.detection.detect import iter_images

    return [path, *iter_images([path])]


def input_files(inputs: Iterable[InputLike]) -> list[str | Path]:
    """Every file the inputs name or lead to (each list read once). Unreadable inputs lead to
    nothing more here: the command's own reader reports them."""
    expand = {DataInput: _data_files, ListInput: _list_files, HeadsInput: _heads_files,
              ImagesInput: _image_files}
    out: list[str | Path] = []
    seen: set[tuple[type, str]] = set()
    for item in inputs:
        if item is None:
            continue
        how = expand.get(type(item))
        if how is None:
            out.append(Path(item))
            continue
        key = (type(item), os.path.abspath(item.path))
        if key in seen:
            continue
        seen.add(key)
        try:
            out += how(Path(item.path))
        except (NetsurgeryError, OSError, ValueError, RecursionError):
            out.append(Path(item.path))
    return out


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class OutputGuard:
    """Checks outputs against every file the declared inputs name or lead to: an output that
    is an input (the same file under another spelling, a symbolic or hard link: compared by
    device and inode; a file not there yet: by its absolute path) is refused even with
    ``overwrite``; an existing output needs ``overwrite``; a folder is never an output.

    One ``stat`` per input file: a dataset of 10,000 images costs milliseconds, not a
    ``realpath`` per file."""

    def __init__(self, inputs: Iterable[InputLike] = (), overwrite: bool = False):
        self.overwrite = overwrite
        self.names: dict[str, str | Path] = {}
        self.ids: dict[tuple[int, int], str | Path] = {}
        for path in input_files(inputs):
            ident = _identity(path)
            if ident is not None:
                self.ids.setdefault(ident, path)
            else:
                self.names.setdefault(os.path.abspath(path), path)

    def input_at(self, path: str | os.PathLike) -> str | Path | None:
        """The input ``path`` is (or would replace), if any."""
        for spelling in (path, os.path.abspath(path), os.path.realpath(path)):
            ident = _identity(spelling)  # 'missing/../x' is x to the user, not to stat()
            if ident is not None:
                return self.ids.get(ident)
            if os.fspath(spelling) in self.names:
                return self.names[os.fspath(spelling)]
        return None

    def check(self, path: str | os.PathLike) -> Path:
        out = Path(path)
        hit = self.input_at(out)
        if hit is not None:
            raise UsageError(f"{out}: output would overwrite the input {hit}; choose another "
                             "path")
        if out.is_dir():  # even with --overwrite: renaming a file onto a folder fails late
            raise UsageError(f"{out}: is a folder, expected the path of an output file")
        if out.exists() and not self.overwrite:
            raise UsageError(f"{out}: exists already; pass --overwrite to replace it")
        return out


def check_output(path: str | os.PathLike, inputs: Iterable[InputLike] = (),
                 overwrite: bool = False) -> Path:
    """Refuse an output path that is an input (or a file an input leads to: see
    :class:`DataInput` and friends), or that exists without ``overwrite``."""
    return OutputGuard(inputs, overwrite).check(path)


def check_outputs(paths: Iterable[str | os.PathLike | None], inputs: Iterable[InputLike] = (),
                  overwrite: bool = False) -> list[Path]:
    """:func:`check_output` for several outputs of one run; two equal outputs are refused.
    (The inputs are expanded only when there is an output to check.)"""
    paths = [p for p in paths if p is not None]
    if not paths:
        return []
    guard = OutputGuard(inputs, overwrite)
    checked: dict[str, Path] = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in checked:
            raise UsageError(f"{path}: given twice as an output (also as {checked[real]}); "
                             "choose different paths")
        checked[real] = guard.check(path)
    return list(checked.values())


# -- reading inputs ------------------------------------------------------------------------

MAX_TEXT_INPUT = 64 * 1024 * 1024  # a cfg of 10,000 layers is ~1 MB


def regular_file_size(path: Path, what: str) -> int:
    """The size of ``path``, refusing what is not a regular file (a FIFO would block forever,
    ``/dev/zero`` never ends). Raises OSError like ``open`` for missing files."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: not a regular file (a pipe, device or socket): expected "
                         f"a {what} file")
    return st.st_size


def read_input_bytes(path: str | os.PathLike, what: str,
                     limit: int = MAX_TEXT_INPUT) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (UsageError otherwise)."""
    p = Path(path)
    size = regular_file_size(p, what)
    if size > limit:
        raise UsageError(f"{p}: {size:,} bytes, more than the {limit:,} a {what} file may "
                         "have here")
    with open(p, "rb") as handle:
        return handle.read(limit + 1)


# -- writing outputs -----------------------------------------------------------------------

NAME_MAX = 255
_STEM_BYTES = 200  # temporary names: "." + stem + ".<pid>-<hex>.staged" must fit NAME_MAX
# errors of the device or file system while writing: reported with the output's path
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
_DISPLAY: dict[str, Path] = {}  # staged temporary path -> the output it becomes


def _display(target: Path) -> Path:
    return _DISPLAY.get(str(target), target)


def _temp_stem(target: Path) -> str:
    """The part of a temporary name that identifies its output: the name itself, or for long
    names a prefix and a hash (so the temporary name stays within NAME_MAX bytes)."""
    raw = os.fsencode(target.name)
    if len(raw) <= _STEM_BYTES:
        return target.name
    digest = hashlib.sha1(raw).hexdigest()[:10]
    return os.fsdecode(raw[:_STEM_BYTES - 11]).rstrip("\udcff") + "~" + digest


def _temp_name(target: Path, suffix: str) -> Path:
    return target.parent / f".{_temp_stem(target)}.{os.getpid()}-{secrets.token_hex(3)}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(target: Path, suffix: str) -> list[Path]:
    """Remove the temporary files of ``target`` left by processes that no longer run (a
    ``SIGKILL`` in the middle of a write). Returns what was removed."""
    prefix = f".{_temp_stem(target)}."
    removed = []
    try:
        candidates = [p for p in target.parent.iterdir()
                      if p.name.startswith(prefix) and p.name.endswith(suffix)]
    except OSError:
        return removed
    for path in candidates:
        tag = path.name[len(prefix):-len(suffix)]
        pid, dash, token = tag.partition("-")
        if not (dash and pid.isdigit() and len(token) == 6) or _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def _cannot_write(target: Path, exc: OSError) -> UsageError:
    return UsageError(f"{_display(target)}: cannot write here: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is renamed to ``path``.

    On any exception (KeyboardInterrupt and SystemExit from signals included) the temporary
    file is removed and ``path`` is left as it was. A full disk or a read-only file system is
    reported as a UsageError naming ``path``."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, no permission, read-only disk
        raise _cannot_write(target, exc) from None
    remove_stale_temporaries(target, ".part")
    # The name is chosen before the file exists, so that a signal arriving at any point
    # after its creation (even before open() returns) finds the name to remove.
    # (tempfile.mkstemp creates the file before we learn its name.)
    tmp = ""
    try:
        while True:
            tmp = str(_temp_name(target, ".part"))
            try:
                # 0o666 & ~umask: the mode any other new output file gets
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise _cannot_write(target, exc) from None
        # Text is UTF-8 whatever the locale; surrogateescape writes back the undecodable bytes
        # a cfg comment was read with.
        text_args = {} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape"}
        try:
            with os.fdopen(fd, mode, **text_args) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            if exc.errno in _WRITE_ERRNOS and exc.filename in (None, tmp, str(target)):
                raise _cannot_write(target, exc) from None
            raise
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
    interrupted run leaves none of them rather than some without their partners. Errors
    while writing a staged file name its target."""
    targets = [Path(p) for p in paths]
    for target in targets:
        remove_stale_temporaries(target, ".staged")
    staged = [_temp_name(t, ".staged") for t in targets]
    _DISPLAY.update({str(s): t for s, t in zip(staged, targets)})
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
    finally:
        for s in staged:
            _DISPLAY.pop(str(s), None)
