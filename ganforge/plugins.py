"""The one place a plugin manager is built, and the typed calls the core makes into it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from ganforge import hookspecs
from ganforge.errors import PluginError
from ganforge.registry import REGISTRATION_HOOKS, Register, Registry

ENTRY_POINT_GROUP = "ganforge"
DISABLE_ENV = "GANFORGE_DISABLE_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from."""

    name: str
    distribution: str | None
    version: str | None


def blocked_from_env() -> list[str]:
    """Plugin names listed in ``$GANFORGE_DISABLE_PLUGINS`` (comma separated)."""
    return [name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()]


class Plugins:
    """A ``PluginManager("ganforge")`` with its specs, entry points and blocked names.

    Build one per run (there is no module-level global). ``extra`` registers plugin objects
    directly, for tests and embedding applications.
    """

    def __init__(
        self,
        *,
        entry_points_: bool = True,
        blocked: Iterable[str] | None = None,
        extra: Iterable[tuple[str, object]] = (),
    ):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        for name in blocked_from_env() if blocked is None else blocked:
            self.pm.set_blocked(name)
        if entry_points_:
            self._load_entry_points()
        for name, plugin in extra:
            self.register(plugin, name)
        self.pm.check_pending()
        self._registry: Registry | None = None

    def _load_entry_points(self) -> None:
        seen: set[str] = set()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            # The same distribution can be visible twice on sys.path (e.g. editable + build dir).
            if ep.name in seen or self.pm.is_blocked(ep.name):
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            try:
                plugin = ep.load()
            except Exception as err:  # any import failure is the plugin's, reported as such
                raise PluginError(
                    f"plugin {ep.name!r} (distribution {dist_name or 'unknown'}, {ep.value}) "
                    f"failed to import: {type(err).__name__}: {err}. "
                    f"Fix or uninstall it, or set {DISABLE_ENV}={ep.name}"
                ) from err
            self.register(plugin, ep.name, dist_name, version)

    def register(self, plugin: object, name: str, distribution=None, version=None) -> None:
        if self.pm.is_blocked(name):
            return
        self.pm.register(plugin, name=name)
        self.info[name] = PluginInfo(name, distribution, version)

    def names(self) -> list[str]:
        return [name for name, plugin in self.pm.list_name_plugin() if plugin is not None]

    @property
    def registry(self) -> Registry:
        """Every component the registered plugins provide, built on first use."""
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        registry = Registry()
        for kind, hook in REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook)
            # Each implementation gets a Register bound to its own plugin, so a duplicate
            # name can be reported with both plugins' names.
            for impl in reversed(caller.get_hookimpls()):
                info = self.info.get(impl.plugin_name, PluginInfo(impl.plugin_name, None, None))
                register = Register(registry, kind, info.name, info.distribution, info.version)
                impl.function(**{arg: register for arg in impl.argnames})
        return registry

    # Lifecycle hooks: typed wrappers, so core code never scatters ``pm.hook`` calls.
    def run_start(self, run: Any) -> None:
        self.pm.hook.ganforge_run_start(run=run)

    def log(self, run: Any, step: int, values: dict[str, Any]) -> None:
        self.pm.hook.ganforge_log(run=run, step=step, values=values)

    def checkpoint(self, run: Any, step: int, path: str) -> None:
        self.pm.hook.ganforge_checkpoint(run=run, step=step, path=path)

    def run_end(self, run: Any, step: int, export_path: str | None) -> None:
        self.pm.hook.ganforge_run_end(run=run, step=step, export_path=export_path)

    def describe(self) -> list[dict[str, Any]]:
        """Each plugin with its origin and what it registers (``ganforge plugins``)."""
        by_plugin: dict[str, dict[str, list[str]]] = {name: {} for name in self.names()}
        for kind, entries in self.registry.entries.items():
            for name, entry in sorted(entries.items()):
                by_plugin.setdefault(entry.plugin, {}).setdefault(kind, []).append(name)
        return [
            {
                "name": name,
                "distribution": self.info.get(name, PluginInfo(name, None, None)).distribution,
                "version": self.info.get(name, PluginInfo(name, None, None)).version,
                "registers": registers,
            }
            for name, registers in by_plugin.items()
        ]
