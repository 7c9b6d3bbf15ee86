"""The pipeline of the newcomer-path checks, now a support module of the integration tests."""

from tests.integration.rejected_pipeline import GROUP, TOPIC, Pipeline, pipeline

__all__ = ["GROUP", "TOPIC", "Pipeline", "pipeline"]
