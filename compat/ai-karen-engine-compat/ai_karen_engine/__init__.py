"""Compatibility package: only ``ai_karen_engine.plugins`` is provided, re-exported from karen-hooks."""
