"""Darknet .cfg text <-> typed sections.

The reader keeps the source line of every key so that every later error can point at the
line to fix, and keeps key order and comments so that a cfg written back reads like the one
the user wrote. Meaning follows AlexeyAB/darknet's ``read_cfg``: whitespace inside a line is
ignored, lines starting with ``#`` or ``;`` are comments, values are split at the first ``=``.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from . import schema
from .errors import CfgError

_REQUIRED = object()


@dataclass
class Option:
    """One ``key=value`` line. ``value`` is the text after ``=`` with white space removed."""

    key: str
    value: str
    line: int | None = None
    comments: list[str] = field(default_factory=list)  # comment lines just above it


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
                out.append(f"{opt.key}={opt.value}")
            out.append("")
        out.extend(self.trailing_comments)
        return "\n".join(out).rstrip("\n") + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write the cfg atomically."""
        from .fileio import atomic_write_text

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


def _parse_int(text: str, section: Section, opt: Option) -> int:
    try:
        return int(text, 10)
    except ValueError:
        pass
    # Darknet's atoi reads "1.0" as 1; accept integral floats, refuse the rest.
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None and value.is_integer() and abs(value) < 2**31:
        return int(value)
    raise CfgError(section.path, opt.line,
                   f"[{section.header}] {opt.key}={text}: expected an integer")


def _parse_float(text: str, section: Section, opt: Option) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CfgError(section.path, opt.line,
                       f"[{section.header}] {opt.key}={text}: expected a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise CfgError(section.path, opt.line,
                       f"[{section.header}] {opt.key}={text}: expected a finite number")
    return value


def _strip_inline_comment(text: str) -> str:
    # Darknet has no inline comments, but users write them; ``filters=255 # coco`` must not
    # silently become a different value.
    for mark in ("#", ";"):
        pos = text.find(mark)
        if pos >= 0:
            text = text[:pos]
    return text


def parse_cfg_text(text: str, path: str | None = None, strict_keys: bool = True) -> Cfg:
    """Parse cfg text. Unknown sections and (with ``strict_keys``) keys Darknet never reads are
    errors with ``file:line``; duplicate keys keep Darknet's meaning (the first wins) and add a
    warning."""
    if text.startswith("\ufeff"):
        text = text[1:]
    sections: list[Section] = []
    pending_comments: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())  # Darknet's strip(): every white space character goes
        if not line:
            continue
        if line[0] in "#;":
            pending_comments.append(raw.rstrip())
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(path, lineno, f"malformed section header {raw.strip()!r}: "
                                             "expected [name]")
            header = line[1:-1]
            canonical = schema.canonical_section(header)
            if canonical is None:
                raise CfgError(path, lineno, f"unknown section [{header}]: expected one of "
                                             f"Darknet's layer types (e.g. [convolutional], "
                                             f"[route], [yolo])")
            sections.append(Section(canonical, header, [], lineno, path, pending_comments))
            pending_comments = []
            continue
        if not sections:
            raise CfgError(path, lineno, f"{raw.strip()!r} before the first section: "
                                         "expected a [net] header first")
        if "=" not in line:
            raise CfgError(path, lineno, f"[{sections[-1].header}] {raw.strip()!r}: "
                                         "expected key=value")
        key, value = line.split("=", 1)
        value = _strip_inline_comment(value)
        if not key:
            raise CfgError(path, lineno, f"[{sections[-1].header}] {raw.strip()!r}: "
                                         "missing key before '='")
        section = sections[-1]
        if strict_keys and schema.value_kind(section.type, key) is None:
            raise CfgError(path, lineno, f"[{section.header}] unknown key '{key}': Darknet "
                                         f"does not read it in [{section.type}] (typo?)")
        section.options.append(Option(key, value, lineno, pending_comments))
        pending_comments = []
    if not sections:
        raise CfgError(path, None, "no sections: expected a [net] section and layers")
    net, *layers = sections
    if net.type != "net":
        raise CfgError(path, net.line, f"first section is [{net.header}]: expected [net]")
    cfg = Cfg(net, layers, path, pending_comments)
    for section in sections:
        if section is not net and section.type == "net":
            raise CfgError(path, section.line, "a second [net] section: expected layers only")
        seen: dict[str, int | None] = {}
        for opt in section.options:
            if opt.key in seen:
                cfg.warnings.append(
                    f"{path}:{opt.line}: [{section.header}] duplicate key '{opt.key}' "
                    f"(Darknet uses the first, line {seen[opt.key]})")
            else:
                seen[opt.key] = opt.line
    for section in sections:
        _check_value_kinds(section)
    return cfg


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


def load_cfg(path: str | os.PathLike, strict_keys: bool = True) -> Cfg:
    """Read a .cfg file into sections. Errors name ``file:line``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CfgError(str(p), None, "file not found") from None
    except IsADirectoryError:
        raise CfgError(str(p), None, "is a folder, expected a .cfg file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CfgError(str(p), line, "not UTF-8 text: expected a Darknet .cfg") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise CfgError(str(p), line, "binary data (NUL byte): expected a Darknet .cfg text")
    return parse_cfg_text(text, str(p), strict_keys)


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
