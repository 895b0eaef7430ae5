"""Stubs generated from proto/mercator/limits/v1/limits.proto at build time."""
