"""The pipeline fixtures of tests/integration, for the tests here."""

from tests.integration.conftest import case, catalog_cleanup  # noqa: F401 - fixtures
