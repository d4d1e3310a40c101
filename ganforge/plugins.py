"""The one place a plugin manager is built, and the typed calls the core makes into it."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from ganforge import hookspecs
from ganforge.errors import PluginError, did_you_mean
from ganforge.hookspecs import RunInfo
from ganforge.registry import (
    REGISTRATION_HOOKS,
    RecipeRegister,
    Register,
    Registry,
    plugin_origin,
)

ENTRY_POINT_GROUP = "ganforge"
DISABLE_ENV = "GANFORGE_DISABLE_PLUGINS"
TRACE_ENV = "GANFORGE_TRACE_PLUGINS"
RECIPES_HOOK = "ganforge_register_recipes"


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from."""

    name: str
    distribution: str | None
    version: str | None


def blocked_from_env() -> list[str]:
    """Plugin names listed in ``$GANFORGE_DISABLE_PLUGINS`` (comma separated)."""
    return [name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()]


def tracing_from_env() -> bool:
    """Whether ``$GANFORGE_TRACE_PLUGINS`` asks for a trace of plugin loading and hook calls."""
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _write_trace(message: str) -> None:
    from tqdm.auto import tqdm  # its write() keeps a progress bar intact around the lines

    for line in message.rstrip("\n").splitlines():
        tqdm.write(f"ganforge: trace: {line}", file=sys.stderr)


class Plugins:
    """A ``PluginManager("ganforge")`` with its specs, entry points and blocked names.

    Build one per run (there is no module-level global). ``extra`` registers ``(name,
    plugin)`` objects directly, for tests and embedding applications; an installed plugin of
    the same name is left out, so a package's tests work installed or not. ``trace`` (default:
    ``$GANFORGE_TRACE_PLUGINS``) writes every plugin loaded and every hook call to stderr.
    """

    def __init__(
        self,
        *,
        entry_points_: bool = True,
        blocked: Iterable[str] | None = None,
        extra: Iterable[tuple[str, object]] = (),
        trace: bool | None = None,
    ):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.blocked_installed: list[str] = []  # installed plugins left out, as their origins
        self._trace = self.pm.trace.root.get("plugins")
        if tracing_from_env() if trace is None else trace:
            self.pm.trace.root.setwriter(_write_trace)
            self.pm.enable_tracing()  # lifecycle hooks, through pluggy's own hook tracing
        for name in blocked_from_env() if blocked is None else blocked:
            self.pm.set_blocked(name)
            self._trace(f"plugin {name!r} is blocked")
        extra = list(extra)
        if entry_points_:
            self._load_entry_points(skip={name for name, _ in extra})
        for name, plugin in extra:
            self.register(plugin, name)
        self._check_pending()
        self._registry: Registry | None = None

    def _load_entry_points(self, skip: set[str]) -> None:
        seen: dict[str, tuple[str | None, str]] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in skip:
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            if self.pm.is_blocked(ep.name):
                self.blocked_installed.append(plugin_origin(ep.name, dist_name, version))
                continue
            if ep.name in seen:
                # The same distribution can be visible twice on sys.path (e.g. editable + build
                # dir); another one using the name would silently replace a plugin.
                if seen[ep.name] != (dist_name, ep.value):
                    first_dist, first_value = seen[ep.name]
                    raise PluginError(
                        f"two plugins are named {ep.name!r}: distribution "
                        f"{first_dist or 'unknown'} ({first_value}) and distribution "
                        f"{dist_name or 'unknown'} ({ep.value}); uninstall one of them"
                    )
                continue
            seen[ep.name] = (dist_name, ep.value)
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as err:  # an import failure is the plugin's
                raise PluginError(
                    f"plugin {ep.name!r} (distribution {dist_name or 'unknown'}, {ep.value}) "
                    f"failed to import: {type(err).__name__}: {err}. "
                    f"Fix or uninstall it, or set {DISABLE_ENV}={ep.name}"
                ) from err
            self.register(plugin, ep.name, dist_name, version)

    def register(self, plugin: object, name: str, distribution=None, version=None) -> None:
        """Register ``plugin`` as ``name``; a hook implementation pluggy rejects (an argument
        its spec does not have) is a PluginError naming the plugin and its distribution."""
        if self.pm.is_blocked(name):
            return
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as err:
            raise PluginError(
                f"{plugin_origin(name, distribution, version)} has a hook with the wrong "
                f"signature: {'; '.join(str(err).splitlines())}. Fix or uninstall it, or set "
                f"{DISABLE_ENV}={name}"
            ) from None
        self.info[name] = PluginInfo(name, distribution, version)
        self._trace(f"registered {plugin_origin(name, distribution, version)}: {plugin!r}")

    def _check_pending(self) -> None:
        """Every function marked ``@hookimpl`` must implement a known hook (catches typos)."""
        known = [name for name in dir(hookspecs) if name.startswith("ganforge_")]
        for hook, caller in vars(self.pm.hook).items():
            if hook.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if not impl.optionalhook:
                    raise PluginError(
                        f"{self.origin(impl.plugin_name)} implements unknown hook {hook!r}"
                        f"{did_you_mean(hook, known)}; fix or uninstall it, or set "
                        f"{DISABLE_ENV}={impl.plugin_name}"
                    )

    def origin(self, name: str) -> str:
        """``plugin 'NAME' (DISTRIBUTION VERSION)`` for a registered plugin."""
        info = self.info.get(name, PluginInfo(name, None, None))
        return plugin_origin(info.name, info.distribution, info.version)

    def names(self) -> list[str]:
        return [name for name, plugin in self.pm.list_name_plugin() if plugin is not None]

    @property
    def registry(self) -> Registry:
        """Every component the registered plugins provide, built on first use."""
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        blocked = frozenset(name for name, plugin in self.pm.list_name_plugin() if plugin is None)
        registry = Registry(blocked=sorted(set(self.blocked_installed)), blocked_names=blocked)
        kinds = {hook: kind for kind, hook in REGISTRATION_HOOKS.items()}
        for hook in [*kinds, RECIPES_HOOK]:
            # Each implementation gets a register bound to its own plugin, so a duplicate
            # name can be reported with both plugins' names.
            for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
                info = self.info.get(impl.plugin_name, PluginInfo(impl.plugin_name, None, None))
                plugin = (info.name, info.distribution, info.version)
                if hook == RECIPES_HOOK:
                    register = RecipeRegister(registry, *plugin)
                else:
                    register = Register(registry, kinds[hook], *plugin)
                self._call_registration(hook, impl, register, registry)
        return registry

    def _call_registration(self, hook: str, impl: pluggy.HookImpl, register, registry) -> None:
        """Call one plugin's registration hook (directly, to know which plugin it is)."""
        origin = self.origin(impl.plugin_name)
        before = registry.registered()
        try:
            impl.function(**{arg: register for arg in impl.argnames})
        except PluginError:
            raise
        except (Exception, SystemExit) as err:  # a plugin's bug (or exit), reported as its
            raise PluginError(
                f"{origin} failed in {hook}: {type(err).__name__}: {err}. "
                f"Fix or uninstall it, or set {DISABLE_ENV}={impl.plugin_name}"
            ) from err
        added = sorted(entry.split(" ", 1)[1] for entry in registry.registered() - before)
        self._trace(f"{hook} of {origin}: {register.kind} {', '.join(added) or '(none)'}")

    # Lifecycle hooks: typed wrappers, so core code never scatters ``pm.hook`` calls.
    def run_start(self, run: RunInfo) -> None:
        self._call_lifecycle("ganforge_run_start", run=run)

    def log(self, run: RunInfo, step: int, values: dict[str, Any]) -> None:
        self._call_lifecycle("ganforge_log", run=run, step=step, values=values)

    def checkpoint(self, run: RunInfo, step: int, path: str) -> None:
        self._call_lifecycle("ganforge_checkpoint", run=run, step=step, path=path)

    def run_end(self, run: RunInfo, step: int, export_path: str | None) -> None:
        self._call_lifecycle("ganforge_run_end", run=run, step=step, export_path=export_path)

    def _call_lifecycle(self, hook: str, **kwargs: Any) -> None:
        """Call ``hook`` through pluggy (its order, wrappers and tracing); an implementation
        that raises is a PluginError naming the plugin and its distribution, found from the
        traceback (never a traceback from inside a run)."""
        caller = getattr(self.pm.hook, hook)
        try:
            caller(**kwargs)
        except (Exception, SystemExit) as err:  # a plugin's bug (or exit), reported as its
            codes = {
                getattr(impl.function, "__code__", None): impl.plugin_name
                for impl in caller.get_hookimpls()
            }
            frames = [frame.f_code for frame, _ in traceback.walk_tb(err.__traceback__)]
            name = next((codes[code] for code in frames if code in codes), None)
            who = self.origin(name) if name else "a plugin"
            hint = f" Fix or uninstall it, or set {DISABLE_ENV}={name}" if name else ""
            problem = f"{who} failed in {hook}: {type(err).__name__}: {err}.{hint}"
            raise PluginError(problem) from err

    def describe(self) -> list[dict[str, Any]]:
        """Each plugin with its origin and what it registers (``ganforge plugins``)."""
        by_plugin: dict[str, dict[str, list[str]]] = {name: {} for name in self.names()}
        for kind, entries in self.registry.entries.items():
            for name, entry in sorted(entries.items()):
                by_plugin.setdefault(entry.plugin, {}).setdefault(kind, []).append(name)
        for name, recipe in sorted(self.registry.recipes.items()):
            by_plugin.setdefault(recipe.plugin, {}).setdefault("recipe", []).append(name)
        return [
            {
                "name": name,
                "distribution": self.info.get(name, PluginInfo(name, None, None)).distribution,
                "version": self.info.get(name, PluginInfo(name, None, None)).version,
                "registers": registers,
            }
            for name, registers in by_plugin.items()
        ]
