"""Darknet .cfg text <-> typed sections.

The reader keeps the source line of every key so that every later error can point at the
line to fix, and keeps key order and comments so that a cfg written back reads like the one
the user wrote. Meaning follows AlexeyAB/darknet's ``read_cfg``: whitespace inside a line is
ignored, lines starting with ``#`` or ``;`` are comments, values are split at the first ``=``.
"""
from __future__ import annotations

import contextvars
import copy
import difflib
import math
import os
import re
import warnings as warnings_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from netsurgery.errors import CfgError, CfgWarning
from netsurgery.fileio import read_input_bytes

from . import schema

_REQUIRED = object()

# What ``strict=None`` means when reading a cfg: False (Darknet's leniency, with warnings)
# unless the CLI's ``--strict`` (or :func:`strict_reading`) says otherwise.
STRICT_DEFAULT: contextvars.ContextVar[bool] = contextvars.ContextVar("strict_cfg",
                                                                        default=False)


def strict_reading(strict: bool = True) -> contextvars.Token:
    """Make every cfg read with ``strict=None`` (the default) strict or lenient from now on in
    this context; returns the token to undo it (``STRICT_DEFAULT.reset(token)``)."""
    return STRICT_DEFAULT.set(strict)


@dataclass
class Option:
    """One ``key=value`` line. ``value`` is the text after ``=`` with white space removed."""

    key: str
    value: str
    line: int | None = None
    comments: list[str] = field(default_factory=list)  # comment lines just above it
    inline_comment: str = ""  # "# ..." written after the value on the same line


@dataclass
class Section:
    """One ``[header]`` and its options. ``type`` is the canonical section name, ``header``
    the name as written (an alias such as ``conv`` is kept for the round trip)."""

    type: str
    header: str
    options: list[Option] = field(default_factory=list)
    line: int | None = None
    path: str | None = None
    comments: list[str] = field(default_factory=list)

    # -- lookup ---------------------------------------------------------------------------
    def find(self, key: str) -> Option | None:
        """The option Darknet would use for ``key``: the first one (option_find semantics)."""
        for opt in self.options:
            if opt.key == key:
                return opt
        return None

    def has(self, key: str) -> bool:
        return self.find(key) is not None

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A CfgError located at ``key``'s line, or at the section header."""
        opt = self.find(key) if key else None
        line = opt.line if opt is not None and opt.line is not None else self.line
        return CfgError(self.path, line, f"[{self.header}] {message}")

    def get_str(self, key: str, default=_REQUIRED) -> str:
        opt = self.find(key)
        if opt is None:
            if default is _REQUIRED:
                raise self.error(f"missing required key '{key}'")
            return default
        return opt.value

    def get_int(self, key: str, default=_REQUIRED) -> int:
        opt = self.find(key)
        if opt is None:
            if default is _REQUIRED:
                raise self.error(f"missing required key '{key}'")
            return default
        return _parse_int(opt.value, self, opt)

    def get_float(self, key: str, default=_REQUIRED) -> float:
        opt = self.find(key)
        if opt is None:
            if default is _REQUIRED:
                raise self.error(f"missing required key '{key}'")
            return default
        return _parse_float(opt.value, self, opt)

    def get_ints(self, key: str, default=_REQUIRED) -> list[int]:
        opt = self.find(key)
        if opt is None:
            if default is _REQUIRED:
                raise self.error(f"missing required key '{key}'")
            return list(default)
        return [_parse_int(v, self, opt) for v in _split_list(opt.value, self, opt)]

    def get_floats(self, key: str, default=_REQUIRED) -> list[float]:
        opt = self.find(key)
        if opt is None:
            if default is _REQUIRED:
                raise self.error(f"missing required key '{key}'")
            return list(default)
        return [_parse_float(v, self, opt) for v in _split_list(opt.value, self, opt)]

    # -- editing --------------------------------------------------------------------------
    def set(self, key: str, value) -> None:
        """Set ``key`` (first occurrence) or append it; lists are written comma-separated."""
        text = _format_value(value)
        opt = self.find(key)
        if opt is None:
            self.options.append(Option(key, text))
        else:
            opt.value = text

    def remove(self, key: str) -> None:
        self.options = [o for o in self.options if o.key != key]

    def copy(self) -> "Section":
        return copy.deepcopy(self)


@dataclass
class Cfg:
    """A whole .cfg: the ``[net]`` section and the layer sections (index = Darknet index)."""

    net: Section
    layers: list[Section]
    path: str | None = None
    trailing_comments: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    strict: bool = False  # warnings are errors (``strict=True`` / ``--strict``)
    issues: list[CfgError] = field(default_factory=list)  # the warnings, as errors to raise

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Section]:
        return iter(self.layers)

    def copy(self) -> "Cfg":
        return copy.deepcopy(self)

    def to_text(self) -> str:
        """The cfg as Darknet text, key order and comments kept."""
        out: list[str] = []
        for section in [self.net, *self.layers]:
            out.extend(section.comments)
            out.append(f"[{section.header}]")
            for opt in section.options:
                out.extend(opt.comments)
                out.append(f"{opt.key}={opt.value}" +
                           (f" {opt.inline_comment}" if opt.inline_comment else ""))
            out.append("")
        out.extend(self.trailing_comments)
        return "\n".join(out).rstrip("\n") + "\n"

    def warn(self, section: Section, message: str, key: str | None = None) -> None:
        """Something Darknet accepts quietly or with a warning of its own (a key it does not
        read, surplus anchors ...): with ``strict`` a :class:`CfgError` at ``key``'s line,
        else a warning ``file:line: [section] message`` kept in :attr:`warnings` and issued
        as a :class:`CfgWarning` (once per cfg: rebuilding the network does not repeat it)."""
        issue = section.error(message, key)
        if self.strict:
            raise issue
        self.add_warning(issue)

    def add_warning(self, issue: CfgError) -> None:
        """Record and issue a located warning (see :meth:`warn`)."""
        text = str(issue)
        if text not in self.warnings:
            self.warnings.append(text)
            self.issues.append(issue)
            warnings_module.warn(CfgWarning(text), stacklevel=3)

    def save(self, path: str | os.PathLike) -> None:
        """Write the cfg atomically."""
        from netsurgery.fileio import atomic_write_text

        atomic_write_text(path, self.to_text())


# ---------------------------------------------------------------------------------------------
def _format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def _split_list(text: str, section: Section, opt: Option) -> list[str]:
    parts = text.split(",")
    # Darknet tolerates one trailing comma (e.g. "anchors=1,2,3,"); an empty item elsewhere
    # is a typo.
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if not parts or any(p == "" for p in parts):
        raise CfgError(section.path, opt.line,
                       f"[{section.header}] {opt.key}={text}: expected a comma-separated list")
    return parts


# Numbers as Darknet's atoi/atof read them, in ASCII: Python's int() and float() also accept
# "1_0", "١٢" or "1e3" (as an int), which Darknet reads differently or not at all.
_INT_TEXT = re.compile(r"[+-]?[0-9]+(\.0*)?")  # "16.0" is read as 16 by atoi too
_FLOAT_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INT_MIN, _INT_MAX = -2**31, 2**31 - 1  # Darknet stores these values in a C int


def _shorten(text: str, limit: int = 40) -> str:
    """A value as shown in an error message: a 5000-digit value would drown the message."""
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text)} characters)"


def _parse_int(text: str, section: Section, opt: Option) -> int:
    if _INT_TEXT.fullmatch(text):
        whole = text.split(".")[0]
        # int() refuses strings of over 4300 digits; over 10 significant ones is out of range
        digits = whole.lstrip("+-").lstrip("0") or "0"
        value = int(digits) * (-1 if whole.startswith("-") else 1) if len(digits) <= 10 else None
        if value is not None and _INT_MIN <= value <= _INT_MAX:
            return value
        raise CfgError(section.path, opt.line,
                       f"[{section.header}] {opt.key}={_shorten(text)}: expected an integer in "
                       f"{_INT_MIN}..{_INT_MAX} (Darknet's int)")
    raise CfgError(section.path, opt.line,
                   f"[{section.header}] {opt.key}={_shorten(text)}: expected an integer")


def _parse_float(text: str, section: Section, opt: Option) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None and not math.isfinite(value):  # nan, inf, 1e400
        raise CfgError(section.path, opt.line,
                       f"[{section.header}] {opt.key}={_shorten(text)}: expected a finite number")
    if value is None or not _FLOAT_TEXT.fullmatch(text):
        raise CfgError(section.path, opt.line,
                       f"[{section.header}] {opt.key}={_shorten(text)}: expected a number")
    return value


def _strip_inline_comment(text: str) -> str:
    # Darknet has no inline comments, but users write them; ``filters=255 # coco`` must not
    # silently become a different value.
    for mark in ("#", ";"):
        pos = text.find(mark)
        if pos >= 0:
            text = text[:pos]
    return text


def _inline_comment(raw: str) -> str:
    """The comment after the value of a raw ``key=value # comment`` line, kept for
    ``to_text``."""
    value = raw.split("=", 1)[1]
    marks = [p for p in (value.find("#"), value.find(";")) if p >= 0]
    return value[min(marks):].strip() if marks else ""


_LINE_END = re.compile(r"\r\n|\r|\n")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes kept by the surrogateescape decoding


def printable(text: str) -> str:
    """``text`` with any undecodable byte shown as ``\\xNN`` (surrogates cannot be printed)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")



def parse_cfg_text(text: str, path: str | None = None, strict: bool | None = None) -> Cfg:
    """Parse cfg text as Darknet's ``read_cfg`` does. Unknown sections are errors with
    ``file:line``. What Darknet reads without complaint or only warns about — a key it never
    reads (its "Unused field"), a duplicate key (the first wins), an inline comment in a word
    value — is kept for the round trip and reported as a warning (:attr:`Cfg.warnings` and a
    :class:`~netsurgery.errors.CfgWarning`); with ``strict`` each is a :class:`CfgError`
    (``None``: :data:`STRICT_DEFAULT`)."""
    strict = STRICT_DEFAULT.get() if strict is None else strict
    if text.startswith("\ufeff"):
        text = text[1:]
    sections: list[Section] = []
    pending_comments: list[str] = []
    found: list[tuple[Section, Option, str]] = []  # what Darknet accepts: warnings
    # Lines end at LF, CR LF or CR, as editors count them; str.splitlines() would also split
    # at form feeds and the like, and error messages would name the wrong line.
    for lineno, raw in enumerate(_LINE_END.split(text), start=1):
        line = "".join(raw.split())  # Darknet's strip(): every white space character goes
        if not line:
            continue
        if line[0] in "#;":
            pending_comments.append(raw.rstrip())
            continue
        if _NOT_UTF8.search(_strip_inline_comment(line)):
            raise CfgError(path, lineno, f"'{printable(raw.strip())}': bytes that are not "
                                         "UTF-8 text outside a comment: expected ASCII "
                                         "section names, keys and values")
        if line[0] == "[":
            sections.append(_section_header(line, raw, path, lineno, pending_comments))
            pending_comments = []
            continue
        if not sections:
            raise CfgError(path, lineno, f"{raw.strip()!r} before the first section: "
                                         "expected a [net] header first")
        section = sections[-1]
        key, value, inline = _key_value(line, raw, section, path, lineno)
        opt = Option(key, value, lineno, pending_comments, inline)
        section.options.append(opt)
        pending_comments = []
        if schema.value_kind(section.type, key) is None:
            found.append((section, opt, unknown_key_message(section, key)))
        elif inline and schema.value_kind(section.type, key) == "str":
            # atoi/atof stop at '#', but a word value does not: Darknet reads the comment too
            found.append((section, opt,
                          f"{key}: Darknet reads the inline comment as part of the value "
                          f"({printable(line.split('=', 1)[1])!r}); netsurgery uses {value!r}"))
    if not sections:
        raise CfgError(path, None, "no sections: expected a [net] section and layers")
    net, *layers = sections
    if net.type != "net":
        raise CfgError(path, net.line, f"first section is [{net.header}]: expected [net]")
    cfg = Cfg(net, layers, path, pending_comments, strict=strict)
    for section in sections:
        if section is not net and section.type == "net":
            raise CfgError(path, section.line, "a second [net] section: expected layers only")
        seen: dict[str, int | None] = {}
        for opt in section.options:
            if opt.key in seen:
                found.append((section, opt, f"duplicate key '{opt.key}' (Darknet uses the "
                                            f"first, line {seen[opt.key]})"))
            else:
                seen[opt.key] = opt.line
    for section in sections:
        _check_value_kinds(section)
    for section, opt, message in sorted(found, key=lambda f: f[1].line or 0):
        issue = CfgError(path, opt.line, f"[{section.header}] {message}")
        if strict:
            raise issue
        cfg.add_warning(issue)
    return cfg


def _section_header(line: str, raw: str, path: str | None, lineno: int,
                    comments: list[str]) -> Section:
    if not line.endswith("]") or len(line) < 3:
        raise CfgError(path, lineno, f"malformed section header {raw.strip()!r}: "
                                     "expected [name]")
    header = line[1:-1]
    canonical = schema.canonical_section(header)
    if canonical is None:
        raise CfgError(path, lineno, f"unknown section [{header}]: expected one of "
                                     f"Darknet's layer types (e.g. [convolutional], "
                                     f"[route], [yolo])")
    return Section(canonical, header, [], lineno, path, comments)


def _key_value(line: str, raw: str, section: Section, path: str | None,
               lineno: int) -> tuple[str, str, str]:
    """(key, value without an inline comment, the inline comment) of an option line."""
    if "=" not in line:
        raise CfgError(path, lineno, f"[{section.header}] {raw.strip()!r}: expected key=value")
    key, written = line.split("=", 1)
    if not key:
        raise CfgError(path, lineno, f"[{section.header}] {raw.strip()!r}: "
                                     "missing key before '='")
    value = _strip_inline_comment(written)
    return key, value, (_inline_comment(raw) if value != written else "")


def unknown_key_message(section: Section, key: str) -> str:
    """Darknet's "Unused field" for ``key``, with the likely intended key: a near-miss of a
    key of this section (``siez`` → ``size``), or the sections that do read it."""
    known = schema.known_keys(section.type)
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.75)
    elsewhere = [name for name in schema.SECTION_KEYS
                 if name != section.type and key in schema.SECTION_KEYS[name]]
    if elsewhere:
        hint = " (it is read in " + ", ".join(f"[{n}]" for n in elsewhere) + ")"
    elif close:
        hint = f" (typo? did you mean '{by_lower[close[0]]}'?)"
    else:
        hint = " (typo?)"
    return f"unknown key '{key}': Darknet does not read it in [{section.type}]{hint}"


def _check_value_kinds(section: Section) -> None:
    """Malformed numbers are reported where they are written, not when first used."""
    for opt in section.options:
        kind = schema.value_kind(section.type, opt.key)
        if kind == "int":
            _parse_int(opt.value, section, opt)
        elif kind == "float":
            _parse_float(opt.value, section, opt)
        elif kind == "ints":
            [_parse_int(v, section, opt) for v in _split_list(opt.value, section, opt)]
        elif kind == "floats":
            [_parse_float(v, section, opt) for v in _split_list(opt.value, section, opt)]


def load_cfg(path: str | os.PathLike, strict: bool | None = None) -> Cfg:
    """Read a .cfg file into sections. Errors name ``file:line``; ``strict`` makes the
    warnings (see :func:`parse_cfg_text`) errors."""
    p = Path(path)
    try:
        data = read_input_bytes(p, "cfg")  # refuses FIFOs, devices and huge files
    except FileNotFoundError:
        raise CfgError(str(p), None, "file not found") from None
    except IsADirectoryError:
        raise CfgError(str(p), None, "is a folder, expected a .cfg file") from None
    except OSError as exc:  # permissions, a file in place of a folder, I/O errors
        raise CfgError(str(p), None, f"cannot read: {exc.strerror or exc}") from None
    # Darknet reads bytes: comments in a legacy encoding (Latin-1 "° ü") are fine there. Bytes
    # that are not UTF-8 are kept as surrogates, so comments survive a round trip byte for
    # byte; parse_cfg_text refuses them outside comments.
    text = data.decode("utf-8", "surrogateescape")
    if "\x00" in text:
        line = len(_LINE_END.findall(text[: text.index("\x00")])) + 1
        raise CfgError(str(p), line, "binary data (NUL byte): expected a Darknet .cfg text")
    return parse_cfg_text(text, str(p), strict)


def edited_text(original: str, before: Cfg, after: Cfg) -> str:
    """``original`` — the text ``before`` was parsed from — with only what ``after`` changed:
    values that differ are rewritten on their own line (spacing around ``=`` and any comment
    after the value kept), keys new in ``after`` are added after the last line of their
    section; every other line stays as it was (blank lines, ``key = value`` spacing,
    comments). ``after`` must have the same sections as ``before`` (an edited copy)."""
    if len(before.layers) != len(after.layers):
        raise ValueError("edited_text: the edit added or removed sections")
    lines = _LINE_END.split(original)
    ends = _LINE_END.findall(original) + [""]
    replaced: dict[int, str] = {}
    appended: dict[int, list[str]] = {}
    for old, new in zip([before.net, *before.layers], [after.net, *after.layers]):
        last = max([old.line or 0] + [o.line or 0 for o in old.options])
        for opt in new.options:
            found = old.find(opt.key)
            if found is None:
                appended.setdefault(last, []).append(f"{opt.key}={opt.value}")
            elif found.value != opt.value:
                replaced[found.line] = _with_value(lines[found.line - 1], opt.value)
    out = []
    for number, (line, end) in enumerate(zip(lines, ends), start=1):
        out.append(replaced.get(number, line) + end)
        for extra in appended.get(number, ()):
            out.append(extra + (end or "\n"))
    return "".join(out)


def save_edited(after: Cfg, path: str | os.PathLike, original: str | os.PathLike) -> None:
    """Write ``after`` — an edited copy of the cfg read from ``original`` — to ``path``
    atomically, as :func:`edited_text` of the original bytes (only the edited keys change)."""
    from netsurgery.fileio import atomic_write_bytes

    text = Path(original).read_bytes().decode("utf-8", "surrogateescape")
    before = parse_cfg_text(text, str(original), strict=False)
    atomic_write_bytes(path, edited_text(text, before, after).encode("utf-8", "surrogateescape"))


def _with_value(raw: str, value: str) -> str:
    """A ``key = value  # comment`` line with another value, its layout kept."""
    key, _, rest = raw.partition("=")
    lead = rest[:len(rest) - len(rest.lstrip())]
    marks = [p for p in (rest.find("#"), rest.find(";")) if p >= 0]
    if not marks:
        return f"{key}={lead}{value}"
    written = rest[:min(marks)]
    gap = written[len(written.rstrip()):] or " "
    return f"{key}={lead}{value}{gap}{rest[min(marks):]}"


def make_section(type_: str, options: Sequence[tuple[str, object]] | dict = ()) -> Section:
    """Build a section in code, e.g. ``make_section("route", {"layers": [-1, 61]})``."""
    canonical = schema.canonical_section(type_)
    if canonical is None:
        raise ValueError(f"unknown section type {type_!r}")
    items: Iterable = options.items() if isinstance(options, dict) else options
    section = Section(canonical, type_, [])
    for key, value in items:
        section.options.append(Option(key, _format_value(value)))
    return section
