"""The process sandbox for untrusted plugins. See docs/security.md for the threat model."""

from __future__ import annotations

from ._doctor import LayerStatus, SandboxLayerWarning, doctor, format_doctor, report_layers
from ._executor import SandboxExecutor

__all__ = ["LayerStatus", "SandboxExecutor", "SandboxLayerWarning", "doctor", "format_doctor", "report_layers"]
