"""Helpers for testing against a real gateway (see :mod:`gateway.testing.held`)."""
