"""The pipeline fixtures of tests/integration (`case`, `catalog_cleanup`)."""

from tests.integration.conftest import case, catalog_cleanup

__all__ = ["case", "catalog_cleanup"]
