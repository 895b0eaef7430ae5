"""Adapters that plug limitsd into gateways."""
