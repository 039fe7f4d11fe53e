"""Hypothesis settings for the robustness tests (test_fuzz.py and friends).

Two profiles, chosen with the ``HYPOTHESIS_PROFILE`` environment variable:

* ``ci`` (default): about 60 examples per property, no deadline — the whole fuzz module runs
  in a few seconds on two cores.
* ``long``: 2000 examples per property, for a fuzzing session before a release::

      HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py

The profiles are applied with the :data:`FUZZ` decorator to our own tests only, instead of
``settings.load_profile``, so that importing this module does not change the settings of
other test modules. (``pytest --hypothesis-profile=long`` does not work here: pytest parses
that option before any test module could register the profile.)
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large])

settings.register_profile("ci", max_examples=60, **_COMMON)
settings.register_profile("long", max_examples=2000, **_COMMON)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"HYPOTHESIS_PROFILE={PROFILE!r}: expected 'ci' or 'long'")

#: Decorator giving a property the selected profile's settings.
FUZZ = settings(settings.get_profile(PROFILE))
