"""The ``netsurgery`` command line. Thin: each command parses options and calls the library.

Every module in this package defines its commands on :data:`main`; :func:`load_commands`
imports them (``run`` does so inside its error policy, so a Ctrl-C during the imports of
start-up exits 130 quietly), so a new command is one new module."""
from __future__ import annotations

from .app import load_commands, main, run  # noqa: F401
