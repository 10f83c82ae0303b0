"""Moved to :mod:`gateway.testing`; kept so that tests written against this module still run."""

from gateway.testing.llm import *  # noqa: F403
from gateway.testing.llm import __all__ as __all__
