"""The catalog: dead letters, reprocess requests, audit, consumer registry, reports."""
