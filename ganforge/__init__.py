"""ganforge: a plugin-based, distributed GAN training framework.

The core (this package) owns the hook specs, the plugin manager, the recipe model, the
training loop, checkpoints, export and the CLI. Every concrete GAN component lives in a plugin.

``ganforge.load_generator(path)`` rebuilds an exported generator; ``ganforge.generate``
samples it.
"""

__version__ = "0.1.0"

import pluggy

#: Decorator marking a plugin's hook implementations: ``@ganforge.hookimpl``.
hookimpl = pluggy.HookimplMarker("ganforge")


def __getattr__(name: str):
    # Torch-heavy API, imported on first use so `ganforge validate` and `--help` stay fast.
    if name in ("load_generator", "generate", "GeneratorInfo"):
        from ganforge import export

        return getattr(export, name)
    raise AttributeError(f"module 'ganforge' has no attribute {name!r}")
