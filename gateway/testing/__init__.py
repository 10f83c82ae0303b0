"""Test helpers for the gateway and for integrations built on it (see :mod:`.runner`)."""

from .runner import HOLD, Hold, ScriptedRun, ScriptedRunner

__all__ = ["HOLD", "Hold", "ScriptedRun", "ScriptedRunner"]
