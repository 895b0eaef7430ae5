"""Stubs generated at build time from proto/mercator/limits/v1/limits.proto
and proto/mercator/limits/admin/v1/admin.proto (see setup.py)."""
