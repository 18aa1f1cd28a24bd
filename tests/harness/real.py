"""The one rule for real components in tests: skip with the reason on a machine that
lacks one, fail in CI (`CI` set) or under REQUIRE_REAL_COMPONENTS=1, where a skip would hide
a gap (CI installs everything and runs as root). Not MACHA_-prefixed: that namespace is
the config's, and the config refuses names it does not know."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def required() -> bool:
    # Read when a fixture needs it, not at import: a test may set the variable itself.
    return in_ci() or os.environ.get("REQUIRE_REAL_COMPONENTS") == "1"


def unavailable(message: str) -> NoReturn:
    """Skip, or fail when real components are required."""
    if required():
        pytest.fail(
            f"{message}\n(CI or REQUIRE_REAL_COMPONENTS=1: this must not be skipped)", pytrace=False
        )
    pytest.skip(message)
