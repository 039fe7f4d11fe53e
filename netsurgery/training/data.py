"""Darknet-format datasets: ``.data`` files, ``.names`` files, image lists and label files.

Everything here follows AlexeyAB/darknet (see /work/shared/SPEC.md, "Datasets"): a ``.data``
file names the train/valid image lists, each list holds one image path per line, and each
image's labels live in the ``.txt`` file that :func:`label_path` derives from the image path.
A label line is ``class cx cy w h`` with the box normalised to [0, 1].
"""
from __future__ import annotations

import enum
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from netsurgery.errors import DataError
from netsurgery.fileio import read_input_bytes

# Keys of a .data file whose values are paths (resolved like Darknet, see _resolve_path).
PATH_KEYS = ("train", "valid", "names", "backup", "difficult")


# --------------------------------------------------------------------------- .data / .names


@dataclass(frozen=True)
class ResolvedPath:
    """How a relative path from a dataset file was turned into an absolute one.

    ``base`` is ``"absolute"`` (given absolute), ``"cwd"`` (relative to the working directory,
    as Darknet opens it), ``"file_dir"`` (relative to the folder of the file that named it,
    used only when the cwd-relative path does not exist) or ``"missing"`` (neither exists;
    ``path`` is then the cwd-relative one, the path Darknet would try)."""

    raw: str
    path: Path
    base: str

    @property
    def exists(self) -> bool:
        return self.base != "missing"


@dataclass
class DataFile:
    """A parsed Darknet ``.data`` file. Path values are absolute; ``resolved`` says how each
    was found, ``lines`` gives the line number of every key (for error messages)."""

    path: Path
    classes: int | None = None
    train: Path | None = None
    valid: Path | None = None
    names: Path | None = None
    backup: Path | None = None
    eval: str | None = None
    difficult: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)
    resolved: dict[str, ResolvedPath] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def where(self, key: str) -> str:
        """``file:line`` of ``key`` (or just the file when the key is absent)."""
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line is not None else str(self.path)

    def require(self, key: str) -> Path:
        """The path value of ``key``; DataError when the key is absent or the file missing.

        ``backup`` only needs to be present (Darknet writes into it)."""
        if key not in PATH_KEYS:
            raise ValueError(f"{key!r} is not a path key of a .data file")
        value = getattr(self, key)
        if value is None:
            raise DataError(f"{self.path}: no '{key} = ...' line; add one")
        if key != "backup" and not self.resolved[key].exists:
            raise DataError(f"{self.where(key)}: {key} file not found: {self.resolved[key].raw} "
                            f"(tried {value} and relative to {self.path.parent})")
        return value

    def require_classes(self) -> int:
        """The ``classes`` value; DataError when absent."""
        if self.classes is None:
            raise DataError(f"{self.path}: no 'classes = N' line; add one")
        return self.classes


def _absolute(path: str | os.PathLike) -> Path:
    # abspath rather than resolve(): keep symlinked folders as the user wrote them.
    return Path(os.path.abspath(os.fspath(path)))


def _resolve_path(raw: str, file_dir: Path) -> ResolvedPath:
    """Resolve ``raw`` like Darknet (as given, i.e. relative to the cwd), falling back to the
    folder of the file that mentions it when the cwd-relative path does not exist."""
    given = Path(raw).expanduser()
    if given.is_absolute():
        return ResolvedPath(raw, _absolute(given), "absolute" if given.exists() else "missing")
    cwd_path = _absolute(given)
    if cwd_path.exists():
        return ResolvedPath(raw, cwd_path, "cwd")
    local = _absolute(file_dir / given)
    if local.exists():
        return ResolvedPath(raw, local, "file_dir")
    return ResolvedPath(raw, cwd_path, "missing")


_LINE_END = re.compile(r"\r\n|\r|\n")


def _read_text_lines(path: Path, what: str) -> list[str]:
    """Lines of a text file without line ends; DataError when it cannot be read or is binary
    (a NUL byte), and UsageError for a pipe or device (reading it could block forever)."""
    try:
        data = read_input_bytes(path, what.removeprefix(".").removesuffix(" file"))
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a {what}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        raise DataError(f"{path}:{line}: binary data (NUL byte): expected a {what} (text)")
    # utf-8-sig: lists written by Windows editors often start with a BOM.
    # surrogateescape: keep non-UTF-8 file names byte-exact.
    # Lines end at LF, CR LF or CR, as editors (and the cfg reader) count them; splitlines()
    # would also split at \v, \f and \x1c-\x1e, which Darknet's fgetl does not.
    return _LINE_END.split(data.decode("utf-8-sig", "surrogateescape"))


def load_data_file(path: str | os.PathLike) -> DataFile:
    """Parse a Darknet ``.data`` file (``key = value`` lines).

    Like Darknet, lines starting with ``#`` or ``;`` are comments (there are no end-of-line
    comments) and the first occurrence of a repeated key wins (later ones are reported in
    ``warnings``). Unlike Darknet, spaces inside values are kept (Darknet deletes every space
    of the line). Unknown keys land in ``extra``."""
    data_path = _absolute(path)
    result = DataFile(path=data_path)
    for number, text in enumerate(_read_text_lines(data_path, ".data file"), start=1):
        line = text.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise DataError(f"{data_path}:{number}: expected 'key = value', got {line!r}")
        if key in result.lines:
            result.warnings.append(f"{data_path}:{number}: '{key}' repeated; Darknet uses the "
                                   f"first one (line {result.lines[key]})")
            continue
        result.lines[key] = number
        _set_data_value(result, key, value, number)
    return result


def _set_data_value(result: DataFile, key: str, value: str, number: int) -> None:
    if key == "classes":
        if not re.fullmatch(r"\+?\d+", value) or int(value) <= 0:
            raise DataError(f"{result.path}:{number}: classes must be a positive integer, "
                            f"got {value!r}")
        result.classes = int(value)
    elif key == "eval":
        result.eval = value
    elif key in PATH_KEYS:
        resolved = _resolve_path(value, result.path.parent)
        result.resolved[key] = resolved
        setattr(result, key, resolved.path)
    else:
        result.extra[key] = value


def load_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (``.names`` file).

    Darknet indexes names by line, so a blank line in the middle is kept as an empty name
    (the class ids after it stay where Darknet puts them); blank lines at the end are dropped."""
    names = [line.strip() for line in _read_text_lines(_absolute(path), ".names file")]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise DataError(f"{path}: no class names (expected one name per line)")
    return names


# --------------------------------------------------------------------------- image lists


class ListEntry(NamedTuple):
    """One image of an image list, with its line number there."""

    line: int
    path: Path


def read_image_list_entries(path: str | os.PathLike) -> list[ListEntry]:
    """Like :func:`read_image_list`, keeping the line number of every entry."""
    list_path = _absolute(path)
    entries = []
    for number, text in enumerate(_read_text_lines(list_path, "image list"), start=1):
        raw = text.strip()
        if raw:
            entries.append(ListEntry(number, _resolve_path(raw, list_path.parent).path))
    return entries


def read_image_list(path: str | os.PathLike) -> list[Path]:
    """Image paths of a list file, one per line, blank lines ignored.

    Relative paths are tried against the working directory first (Darknet opens them as
    given), then against the list file's folder; when neither exists the cwd-relative path is
    returned. All returned paths are absolute."""
    return [entry.path for entry in read_image_list_entries(path)]


# --------------------------------------------------------------------------- label paths

# AlexeyAB's replace_image_to_label (src/utils.c), in its order. Each rule replaces only the
# first occurrence. A plain "/images/" is deliberately not replaced (pjreddie's darknet does).
_LABEL_FOLDER_RULES = (
    ("/images/train2017/", "/labels/train2017/"),
    ("/images/val2017/", "/labels/val2017/"),
    ("/JPEGImages/", "/labels/"),
    ("\\images\\train2017\\", "\\labels\\train2017\\"),
    ("\\images\\val2017\\", "\\labels\\val2017\\"),
    ("\\images\\train2014\\", "\\labels\\train2014\\"),
    ("\\images\\val2014\\", "\\labels\\val2014\\"),
    ("/images/train2014/", "/labels/train2014/"),
    ("/images/val2014/", "/labels/val2014/"),
    ("\\JPEGImages\\", "\\labels\\"),
)
# Image extensions AlexeyAB maps to ".txt" (case-sensitive; no ".tif", no ".Jpg").
LABEL_IMAGE_EXTENSIONS = (".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG",
                          ".bmp", ".BMP", ".ppm", ".PPM", ".tiff", ".TIFF")


def label_path_str(image_path: str | os.PathLike) -> str:
    """:func:`label_path` on strings, without any path normalisation."""
    text = os.fspath(image_path)
    for old, new in _LABEL_FOLDER_RULES:
        text = text.replace(old, new, 1)
    text = text.strip(" \t")  # Darknet trims spaces and tabs at both ends here
    for ext in LABEL_IMAGE_EXTENSIONS:
        if text.endswith(ext):
            # Only one can match: after a replacement the name ends in ".txt".
            text = text[: -len(ext)] + ".txt"
    return text


def label_path(image_path: str | os.PathLike) -> Path:
    """The label file AlexeyAB's darknet reads for ``image_path`` (replace_image_to_label).

    Folder rules: ``/images/train2017/``, ``/images/val2017/``, ``/images/train2014/``,
    ``/images/val2014/`` → ``/labels/...`` (also with backslashes) and ``/JPEGImages/`` →
    ``/labels/``; then a trailing image extension (see LABEL_IMAGE_EXTENSIONS) becomes
    ``.txt``. An unsupported extension is left as it is: check ``.suffix == ".txt"``."""
    return Path(label_path_str(image_path))


# --------------------------------------------------------------------------- label files


@dataclass(frozen=True)
class Label:
    """One object: class id and box centre/size, normalised to the image size."""

    class_id: int
    cx: float
    cy: float
    w: float
    h: float


class IssueKind(enum.Enum):
    """What is wrong with an image or a label line."""

    MISSING_IMAGE = "image file missing"
    BAD_EXTENSION = "unsupported image extension"
    MISSING_LABELS = "label file missing"
    UNREADABLE = "label file unreadable"
    COLUMNS = "wrong column count"
    NOT_A_NUMBER = "not a number"
    CLASS_RANGE = "class id out of range"
    NOT_POSITIVE = "w or h not positive"
    OUT_OF_RANGE = "value outside [0, 1]"


@dataclass(frozen=True)
class LabelIssue:
    """A problem found in a label file (or, for image-level problems, in the image list)."""

    file: Path
    line: int | None
    message: str
    kind: IssueKind

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else str(self.file)
        return f"{where}: {self.message}"


_INT = re.compile(r"[+-]?\d+")
# C-style decimal float; Python's float() would also take "nan", "inf" and "1_0".
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _parse_label_line(file: Path, number: int, text: str,
                      n_classes: int) -> Label | LabelIssue:
    def issue(kind: IssueKind, message: str) -> LabelIssue:
        return LabelIssue(file, number, message, kind)

    fields = text.split()
    if len(fields) != 5:
        return issue(IssueKind.COLUMNS, f"expected 5 columns 'class cx cy w h', "
                                        f"got {len(fields)}: {text.strip()!r}")
    if not _INT.fullmatch(fields[0]):
        return issue(IssueKind.NOT_A_NUMBER, f"class id must be an integer, got {fields[0]!r}")
    for name, value in zip(("cx", "cy", "w", "h"), fields[1:]):
        if not _FLOAT.fullmatch(value):
            return issue(IssueKind.NOT_A_NUMBER, f"{name} must be a number, got {value!r}")
    class_id = int(fields[0])
    cx, cy, w, h = (float(value) for value in fields[1:])
    if not 0 <= class_id < n_classes:
        return issue(IssueKind.CLASS_RANGE,
                     f"class id {class_id} outside [0, {n_classes - 1}] ({n_classes} classes)")
    if not (w > 0 and h > 0):
        return issue(IssueKind.NOT_POSITIVE, f"w and h must be > 0, got w={fields[3]} "
                                             f"h={fields[4]}")
    for name, value, raw in zip(("cx", "cy", "w", "h"), (cx, cy, w, h), fields[1:]):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            return issue(IssueKind.OUT_OF_RANGE, f"{name} must lie in [0, 1], got {raw}")
    return Label(class_id, cx, cy, w, h)


def parse_label_file(label_file: str | os.PathLike,
                     n_classes: int) -> tuple[list[Label], list[LabelIssue]]:
    """All valid labels of a file and an issue for every bad line (a missing or unreadable
    file gives one issue with ``line=None``). An empty file is an image without objects."""
    file = Path(label_file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], [LabelIssue(file, None, "label file missing (expected 'class cx cy w h' "
                                           "lines)", IssueKind.MISSING_LABELS)]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return [], [LabelIssue(file, None, f"cannot read label file: {reason}",
                               IssueKind.UNREADABLE)]
    labels: list[Label] = []
    issues: list[LabelIssue] = []
    for number, line in enumerate(_LINE_END.split(text), start=1):
        if not line.strip():
            continue
        parsed = _parse_label_line(file, number, line, n_classes)
        (labels if isinstance(parsed, Label) else issues).append(parsed)
    return labels, issues


def read_labels(label_file: str | os.PathLike, n_classes: int,
                allow_missing: bool = False) -> list[Label]:
    """Labels of one file; DataError (``file:line: ...``) on the first bad line.

    A missing file is an error unless ``allow_missing`` (then: no objects, as in Darknet)."""
    labels, issues = parse_label_file(label_file, n_classes)
    if issues and not (allow_missing and issues[0].kind is IssueKind.MISSING_LABELS):
        raise DataError(str(issues[0]))
    return labels


# --------------------------------------------------------------------------- datasets


class Sample(NamedTuple):
    """An image of a dataset and its labels (unpacks as ``image, labels``)."""

    image: Path
    labels: list[Label]


@dataclass
class DatasetSummary:
    """Counts over a loaded dataset."""

    n_listed: int = 0
    n_used: int = 0
    n_skipped: int = 0
    n_empty: int = 0           # used images without objects (empty or allowed-missing labels)
    n_objects: int = 0
    per_class: list[int] = field(default_factory=list)
    issue_counts: Counter[IssueKind] = field(default_factory=Counter)

    def __str__(self) -> str:
        text = (f"{self.n_used} of {self.n_listed} images used, {self.n_objects} objects, "
                f"{self.n_empty} images without objects")
        if self.n_skipped:
            kinds = ", ".join(f"{count} {kind.value}" for kind, count in
                              sorted(self.issue_counts.items(), key=lambda kv: kv[0].name))
            text += f"; {self.n_skipped} images skipped ({kinds})"
        return text


@dataclass
class Dataset:
    """The usable images of an image list with their labels, and what was wrong with the rest."""

    list_path: Path
    n_classes: int
    items: list[Sample]
    issues: list[LabelIssue]
    summary: DatasetSummary

    def __len__(self) -> int:
        return len(self.items)


def _image_issues(list_path: Path, entry: ListEntry) -> list[LabelIssue]:
    """Problems with the image itself (named at its line of the list)."""
    if not entry.path.is_file():
        return [LabelIssue(list_path, entry.line, f"image file not found: {entry.path}",
                           IssueKind.MISSING_IMAGE)]
    if not label_path_str(entry.path).endswith(".txt"):
        return [LabelIssue(list_path, entry.line,
                           f"Darknet finds no label file for extension {entry.path.suffix!r} "
                           f"(supported: {' '.join(LABEL_IMAGE_EXTENSIONS)})",
                           IssueKind.BAD_EXTENSION)]
    return []


def load_dataset(list_path: str | os.PathLike, n_classes: int, strict: bool = False,
                 allow_missing: bool = False) -> Dataset:
    """Load every image of an image list with its labels.

    An image with any issue (image missing, unsupported extension, missing label file, bad
    label line) is skipped and counted; with ``strict`` the first issue raises DataError
    (``file:line: ...``). ``allow_missing`` treats a missing label file as "no objects", as
    Darknet does (it only warns). An empty label file is always an image without objects."""
    if n_classes <= 0:
        raise DataError(f"{list_path}: number of classes must be positive, got {n_classes}")
    list_abs = _absolute(list_path)
    entries = read_image_list_entries(list_abs)
    items: list[Sample] = []
    all_issues: list[LabelIssue] = []
    summary = DatasetSummary(n_listed=len(entries), per_class=[0] * n_classes)
    for entry in entries:
        issues = _image_issues(list_abs, entry)
        labels: list[Label] = []
        if not issues:
            labels, issues = parse_label_file(label_path(entry.path), n_classes)
            if allow_missing and issues and issues[0].kind is IssueKind.MISSING_LABELS:
                issues = []
        if issues:
            if strict:
                raise DataError(str(issues[0]))
            all_issues.extend(issues)
            summary.n_skipped += 1
            summary.issue_counts.update(issue.kind for issue in issues)
            continue
        items.append(Sample(entry.path, labels))
        summary.n_used += 1
        summary.n_empty += not labels
        summary.n_objects += len(labels)
        for label in labels:
            summary.per_class[label.class_id] += 1
    return Dataset(list_abs, n_classes, items, all_issues, summary)
