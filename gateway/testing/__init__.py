"""Test helpers for the gateway and for integrations built on it: :mod:`.runner` (scripted
runners) and :mod:`.held` (the demo model held at named points; imported on its own, it loads
the agent stack)."""

from .runner import HOLD, Hold, ScriptedRun, ScriptedRunner, Step

__all__ = ["HOLD", "Hold", "ScriptedRun", "ScriptedRunner", "Step"]
