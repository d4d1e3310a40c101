"""Plugin discovery, blocking, duplicate names, import failures, hook docs and listing."""

from __future__ import annotations

import inspect
import json
import sys
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
    # The message names the blocked plugin that would have provided it, with its package.
    assert "blocked by GANFORGE_DISABLE_PLUGINS" in err and "plugin 'dcgan' (ganforge " in err


def test_a_component_no_installed_plugin_provides_says_where_methods_come_from(tmp_path, capsys):
    recipe = (ROOT / "recipes" / "quickstart.toml").read_text(encoding="utf-8")
    path = tmp_path / "r.toml"
    path.write_text(recipe.replace('name = "dcgan"', 'name = "biggan"', 1), encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown generator 'biggan'" in err and "No installed plugin registers it" in err
    assert "`ganforge plugins`" in err and "Traceback" not in err


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
    assert "dcgan  (ganforge " in out and "generator: dcgan" in out
    assert "bce" in next(line for line in out.splitlines() if line.startswith("    loss: "))
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["dcgan"]["registers"] == {"generator": ["dcgan"], "discriminator": ["dcgan"]}
    assert listed["digits"]["distribution"] == "ganforge"


class _WrongArgument:
    @ganforge.hookimpl
    def ganforge_register_losses(self, registry):  # the spec's argument is `register`
        registry("x", lambda: None)


class _Typo:
    @ganforge.hookimpl
    def ganforge_register_loss(self, register):
        register("x", lambda: None)


class _Raises:
    @ganforge.hookimpl
    def ganforge_register_losses(self, register):
        raise RuntimeError("boom")


class _NoCoreArguments:
    @ganforge.hookimpl
    def ganforge_register_generators(self, register):
        register("flat", lambda latent_dim=8: None)


def test_a_hook_with_a_wrong_signature_names_the_plugin_and_the_way_out(monkeypatch):
    with pytest.raises(PluginError) as info:
        Plugins(extra=[("wrongarg", _WrongArgument())])
    message = str(info.value)
    assert "plugin 'wrongarg' (registered directly) has a hook with the wrong signature" in message
    assert "'registry'" in message and "GANFORGE_DISABLE_PLUGINS=wrongarg" in message
    assert "\n" not in message


def test_an_unknown_hook_is_named_with_the_closest_one():
    with pytest.raises(PluginError, match="unknown hook 'ganforge_register_loss'; did you mean "):
        Plugins(extra=[("typo", _Typo())])


def test_a_registration_hook_that_raises_is_the_plugins_error():
    plugins = Plugins(extra=[("raises", _Raises())])
    with pytest.raises(PluginError, match=r"plugin 'raises' .* failed in ganforge_register_losses"):
        plugins.registry  # noqa: B018


def test_a_factory_that_cannot_take_the_core_arguments_is_refused_at_registration():
    plugins = Plugins(extra=[("flat", _NoCoreArguments())])
    with pytest.raises(PluginError) as info:
        plugins.registry  # noqa: B018
    message = str(info.value)
    assert "generator 'flat' has the wrong signature" in message
    assert "resolution, channels, num_classes" in message


def test_a_duplicate_names_both_distributions():
    with pytest.raises(PluginError) as info:
        Plugins(extra=[("twin", _Twin())]).registry  # noqa: B018
    message = str(info.value)
    assert "plugin 'losses' (ganforge 0.1.0)" in message
    assert "plugin 'twin' (registered directly)" in message


def test_a_plugin_given_directly_replaces_the_installed_one_of_that_name():
    class Stand:
        @ganforge.hookimpl
        def ganforge_register_losses(self, register):
            register("stand_in", lambda: None)

    plugins = Plugins(extra=[("losses", Stand())])
    assert plugins.registry.names("loss") == ["stand_in"]
    assert plugins.info["losses"].distribution is None


@pytest.fixture
def recipe_plugin(tmp_path, monkeypatch):
    """An installed plugin (an entry point of a module in tmp_path) that ships a recipe."""
    (tmp_path / "ganforge_recipe_probe.py").write_text(
        "from pathlib import Path\n"
        "from ganforge import hookimpl\n\n"
        "@hookimpl\n"
        "def ganforge_register_recipes(register):\n"
        "    register('tiny', Path(__file__).parent / 'shipped.toml')\n"
    )
    from conftest import tiny_tables
    from ganforge.recipe import dump_toml

    (tmp_path / "shipped.toml").write_text(dump_toml(tiny_tables(tmp_path)))
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = EntryPoint(name="probe", value="ganforge_recipe_probe", group="ganforge")
    real = __import__("ganforge.plugins", fromlist=["entry_points"]).entry_points
    monkeypatch.setattr("ganforge.plugins.entry_points", lambda group: [*real(group=group), probe])
    yield tmp_path / "shipped.toml"
    sys.modules.pop("ganforge_recipe_probe", None)


def test_a_plugins_recipe_runs_by_name_and_is_listed(recipe_plugin, capsys):
    registry = Plugins().registry
    assert registry.recipe("probe:tiny").path == recipe_plugin
    assert registry.recipe("probe:tiny").plugin == "probe"
    assert main(["validate", "probe:tiny", "train.steps=3"]) == 0
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.index("probe  (") < out.index("    recipe: probe:tiny\n")
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["probe"]["registers"] == {"recipe": ["probe:tiny"]}
    assert main(["probe:tiny", "train.steps=1", "run.out_dir=by_name"]) == 0
    assert (recipe_plugin.parent / "by_name" / "generator.safetensors").is_file()


def test_an_unknown_recipe_name_suggests_the_close_one(recipe_plugin, capsys):
    assert main(["validate", "probe:tinny"]) == 2
    err = capsys.readouterr().err
    assert "no recipe file 'probe:tinny', and no plugin registers that name" in err
    assert "did you mean 'probe:tiny'?" in err
    assert main(["validate", "missing.toml"]) == 2
    assert "recipe file not found: missing.toml" in capsys.readouterr().err


def test_a_recipe_registered_with_a_missing_file_names_the_plugin():
    class Missing:
        @ganforge.hookimpl
        def ganforge_register_recipes(self, register):
            register("gone", "/nonexistent/gone.toml")

    with pytest.raises(PluginError, match="plugin 'missing' .*recipe 'gone' names a missing file"):
        Plugins(extra=[("missing", Missing())]).registry  # noqa: B018


def test_tracing_shows_plugins_registrations_and_hook_calls(tiny, monkeypatch, capsys):
    assert Plugins().registry and "trace" not in capsys.readouterr().err
    monkeypatch.setenv("GANFORGE_TRACE_PLUGINS", "1")
    monkeypatch.setenv("GANFORGE_DISABLE_PLUGINS", "hf")
    tiny("train.steps=1").fit()
    err = capsys.readouterr().err
    assert "ganforge: trace: plugin 'hf' is blocked" in err
    assert "ganforge: trace: registered plugin 'dcgan' (ganforge 0.1.0)" in err
    losses = "ganforge: trace: ganforge_register_losses of plugin 'losses' (ganforge 0.1.0): loss "
    assert ", bce, " in err.split(losses, 1)[1].splitlines()[0]
    for hook in ("ganforge_run_start", "ganforge_log", "ganforge_checkpoint", "ganforge_run_end"):
        assert f"ganforge: trace:   {hook} [hook]\n" in err, hook
        assert f"ganforge: trace:   finish {hook} --> [] [hook]\n" in err, hook
    assert "ganforge: trace:       step: 1\n" in err  # the call's arguments
