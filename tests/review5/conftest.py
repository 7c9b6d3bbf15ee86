"""Fixtures of the newcomer-path checks: those of the integration tests, reused."""

from tests.integration.conftest import catalog_cleanup

__all__ = ["catalog_cleanup"]
