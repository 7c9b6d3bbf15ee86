"""Reviewer's failing tests for the tracing half of issue 11."""
