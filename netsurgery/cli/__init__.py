"""The ``netsurgery`` command line. Thin: each command parses options and calls the library.

Every module in this package defines its commands on :data:`main`; they are found at start-up,
so a new command is one new module."""
from __future__ import annotations

import importlib
import pkgutil

from .app import main, run  # noqa: F401

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "app":
        importlib.import_module(f"{__name__}.{_info.name}")
