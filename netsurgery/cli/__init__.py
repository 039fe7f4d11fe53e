"""The ``netsurgery`` command line. Thin: each command parses options and calls the library.

Every module in this package defines its commands on :data:`main`; :class:`~.app.LazyGroup`
finds them in the source and imports a module when one of its commands runs, so a new
command is one new module."""
from __future__ import annotations

from .app import main, run  # noqa: F401
