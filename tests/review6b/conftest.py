"""The integration fixtures (`case`, `catalog_cleanup`) for the review's tests."""

from tests.integration.conftest import case, catalog_cleanup

__all__ = ["case", "catalog_cleanup"]
