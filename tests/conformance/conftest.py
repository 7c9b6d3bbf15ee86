"""Fixtures of the conformance suite: the integration tests' `case` (a migrated schema, a key
prefix and open clients on the shared servers) and the delivery mode a scenario runs in."""

from __future__ import annotations

import pytest

from tests.conformance.support import MODES
from tests.integration.conftest import case

__all__ = ["case"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """The consumer mode: each scenario using it runs exactly-once and at-least-once."""
    return str(request.param)
