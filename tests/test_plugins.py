"""Plugin discovery, blocking, duplicate names, import failures, hook docs and listing."""

from __future__ import annotations

import inspect
import json
import tomllib
from importlib.metadata import EntryPoint

import pytest

import ganforge
from conftest import ROOT
from ganforge import hookspecs
from ganforge.cli import main
from ganforge.errors import PluginError
from ganforge.plugins import Plugins

BUILTINS = {"dcgan", "losses", "digits", "synthetic", "hf"}


def test_builtins_are_discovered_through_entry_points():
    plugins = Plugins()
    assert set(plugins.names()) >= BUILTINS
    for name in BUILTINS:
        assert plugins.info[name].distribution == "ganforge"
        assert plugins.info[name].version == ganforge.__version__
    registry = plugins.registry
    assert registry.get("generator", "dcgan").plugin == "dcgan"
    assert registry.get("loss", "bce").plugin == "losses"
    assert {"digits", "synthetic", "hf"} <= set(registry.names("dataset"))


def test_every_builtin_module_has_an_entry_point():
    modules = {
        p.stem
        for p in (ROOT / "plugins" / "ganforge_plugins").glob("*.py")
        if not p.stem.startswith("_")
    }
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    targets = {value.split(":")[0] for value in declared["ganforge"].values()}
    assert targets == {f"ganforge_plugins.{m}" for m in modules}


def test_blocking_by_environment_removes_a_plugin_and_its_components(monkeypatch):
    monkeypatch.setenv("GANFORGE_DISABLE_PLUGINS", "dcgan, hf")
    plugins = Plugins()
    assert "dcgan" not in plugins.names() and "hf" not in plugins.names()
    assert plugins.registry.find("generator", "dcgan") is None
    assert plugins.registry.find("loss", "bce") is not None


def test_blocked_component_in_a_recipe_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("GANFORGE_DISABLE_PLUGINS", "dcgan")
    assert main(["validate", str(ROOT / "recipes" / "quickstart.toml")]) == 2
    err = capsys.readouterr().err
    assert "generator.name: unknown generator 'dcgan'" in err
    assert "Traceback" not in err


class _Twin:
    @ganforge.hookimpl
    def ganforge_register_losses(self, register):
        register("bce", lambda: None)


def test_duplicate_component_names_name_both_plugins():
    plugins = Plugins(extra=[("twin", _Twin())])
    with pytest.raises(PluginError) as info:
        plugins.registry  # noqa: B018 - building the registry is what fails
    message = str(info.value)
    assert "'bce'" in message and "'losses'" in message and "'twin'" in message


def test_a_plugin_that_fails_to_import_is_named_with_its_distribution(monkeypatch, capsys):
    broken = EntryPoint(name="broken", value="ganforge_no_such_module.plugin", group="ganforge")
    real = __import__("ganforge.plugins", fromlist=["entry_points"]).entry_points
    monkeypatch.setattr("ganforge.plugins.entry_points", lambda group: [*real(group=group), broken])
    with pytest.raises(PluginError, match="plugin 'broken'.*failed to import.*ModuleNotFound"):
        Plugins()
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "GANFORGE_DISABLE_PLUGINS=broken" in err and "Traceback" not in err
    monkeypatch.setenv("GANFORGE_DISABLE_PLUGINS", "broken")  # blocking it is the way out
    assert "broken" not in Plugins().names()


def test_invalid_registrations_are_plugin_errors():
    class Bad:
        @ganforge.hookimpl
        def ganforge_register_generators(self, register):
            register("not a name", object)

    with pytest.raises(PluginError, match="invalid generator name"):
        Plugins(extra=[("bad", Bad())]).registry  # noqa: B018


def test_every_hookspec_is_prefixed_and_documented():
    specs = [
        (n, f)
        for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(f, "ganforge_spec")
    ]
    assert len(specs) >= 8
    for name, func in specs:
        assert name.startswith("ganforge_")
        doc = inspect.getdoc(func) or ""
        assert len(doc) > 80, f"{name} needs a real docstring"
        for param in inspect.signature(func).parameters:
            assert (
                param in doc or param == "register" and "Register" in inspect.getsource(hookspecs)
            ), f"{name}: document {param}"


def test_plugins_command_lists_plugins_and_components(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "dcgan  (ganforge " in out and "generator: dcgan" in out and "loss: bce" in out
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["dcgan"]["registers"] == {"generator": ["dcgan"], "discriminator": ["dcgan"]}
    assert listed["digits"]["distribution"] == "ganforge"
