"""Old path of :class:`karen_hooks.PluginManager`."""

from ._require import require

PluginManager = require("karen_hooks", "PluginManager", __name__)

__all__ = ["PluginManager"]
