"""Soak and chaos runs against real gateway processes (``make soak``); not installed."""
