"""A router for `conveyor consume` processes of ordered-topic tests, configured by environment:

TEST_APPLIED_SCHEMA  schema holding the `applied` table (tests/integration/ordered_support.py)
TEST_MEMBER          the member name recorded with each effect
"""

from __future__ import annotations

import os

from tests.integration.ordered_support import ordered_router

router = ordered_router(os.environ.get("TEST_APPLIED_SCHEMA", "public"), os.environ["TEST_MEMBER"])
