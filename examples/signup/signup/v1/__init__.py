"""The signup.v1 event types, generated from proto/signup/v1 by `buf generate` (do not edit)."""
