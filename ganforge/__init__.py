"""ganforge: a plugin-based, distributed GAN training framework.

The core (this package) owns the hook specs, the plugin manager, the recipe model, the
training loop, export and the CLI. Every concrete GAN component lives in a plugin.
"""

__version__ = "0.1.0"

import pluggy

#: Decorator marking a plugin's hook implementations: ``@ganforge.hookimpl``.
hookimpl = pluggy.HookimplMarker("ganforge")
