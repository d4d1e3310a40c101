"""Recipe validation, suggestions, overrides, and the CLI's answers to bad recipes."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

import ganforge
from conftest import RECIPES, TINY, tiny_tables
from ganforge.cli import main
from ganforge.errors import RecipeError
from ganforge.plugins import Plugins
from ganforge.recipe import apply_overrides, dump_toml, load_recipe, validate


@pytest.fixture(scope="module")
def registry():
    return Plugins().registry


def problems_of(tables, registry) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        validate(tables, registry)
    return dict(info.value.problems)


def test_tiny_recipe_resolves_defaults(tmp_path, registry):
    recipe = validate(tiny_tables(tmp_path), registry)
    assert recipe.get("train.n_critic") == 1
    assert recipe.get("optim.generator.betas") == [0.5, 0.999]
    assert recipe.get("run.mixed_precision") == "auto"
    assert recipe.component("generator").kwargs == {"latent_dim": 8, "width": 4}


def test_out_dir_defaults_to_runs_slash_name(tmp_path, registry):
    tables = tiny_tables(tmp_path)
    del tables["run"]["out_dir"]
    assert str(validate(tables, registry).run_dir) == "runs/tiny"


def test_every_problem_is_reported_at_once_with_suggestions(tmp_path, registry):
    tables = tiny_tables(
        tmp_path,
        "train.stepz=3",
        "train.batch_size=-1",
        "generator.widht=8",
        "loss.name=bcee",
        "optim.generator.lr=fast",
        "trian.x=1",
        "discriminator.norm=group",
        "run.mixed_precision=fp8",
        "data.resolution=true",
        "optim.discriminatr.lr=1",
    )
    problems = problems_of(tables, registry)
    assert "did you mean 'steps'" in problems["train.stepz"]
    assert "must be > 0" in problems["train.batch_size"]
    assert "did you mean 'width'" in problems["generator.widht"]
    assert "did you mean 'bce'" in problems["loss.name"]
    assert "expected a number, got str 'fast'" in problems["optim.generator.lr"]
    assert "did you mean 'train'" in problems["trian"]
    assert "expects Literal['batch', 'none'" in problems["discriminator.norm"]
    assert "'bf16'" in problems["run.mixed_precision"]
    assert "expected an integer" in problems["data.resolution"]
    assert "did you mean 'discriminator'" in problems["optim.discriminatr"]
    assert len(problems) == 10


def test_required_keys_and_component_kwargs(tmp_path, registry):
    tables = tiny_tables(tmp_path, "data.name=hf")  # hf needs a path
    del tables["train"]["steps"]
    del tables["generator"]["name"]
    problems = problems_of(tables, registry)
    assert problems["train.steps"] == "is required"
    assert problems["generator.name"] == "is required"
    assert problems["data.path"] == "is required by dataset 'hf'"


def test_core_arguments_cannot_be_set_in_component_tables(tmp_path, registry):
    problems = problems_of(tiny_tables(tmp_path, "generator.resolution=32"), registry)
    assert "set by the core" in problems["generator.resolution"]


def test_conditional_run_needs_components_that_condition(tmp_path, registry):
    unconditional = ("generator.name=mlp", "discriminator.name=mlp")  # the toy 2-D models
    problems = problems_of(tiny_tables(tmp_path, "data.conditional=true", *unconditional), registry)
    assert "cannot condition on labels" in problems["generator.name"]
    assert "cannot condition on labels" in problems["discriminator.name"]


def test_toml_syntax_error_names_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nname = "x"\n[train]\nsteps = = 3\n')
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "invalid TOML" in err and "line 4" in err and "column" in err
    assert "Traceback" not in err


def test_overrides_reach_any_depth_and_parse_values():
    tables = apply_overrides(
        {"train": {"steps": 1}},
        [
            "train.steps=10",
            "optim.generator.betas=[0.0, 0.9]",
            "regularizers.r1.gamma=0.5",
            "run.name=my run",
            "a.b.c.d=true",
            "data.path=/tmp/x=y",
        ],
    )
    assert tables["train"]["steps"] == 10
    assert tables["optim"]["generator"]["betas"] == [0.0, 0.9]
    assert tables["regularizers"]["r1"]["gamma"] == 0.5
    assert tables["run"]["name"] == "my run"  # not TOML: kept as a string
    assert tables["a"]["b"]["c"]["d"] is True
    assert tables["data"]["path"] == "/tmp/x=y"


def test_bad_overrides_are_recipe_errors():
    with pytest.raises(RecipeError) as info:
        apply_overrides({"train": {"steps": 1}}, ["train.steps.x=1", "nonsense", "=3"])
    keys = [k for k, _ in info.value.problems]
    assert keys == ["train.steps", "nonsense", "=3"]


def test_overriding_a_component_name_drops_the_old_components_options(registry):
    dcgan = tomllib.loads((RECIPES[0].parent / "dcgan.toml").read_text())
    tables = apply_overrides(dcgan, ["data.size=16", "data.name=synthetic"])
    assert tables["data"] == {"name": "synthetic", "resolution": 64, "size": 16}
    validate(tables, registry)


def test_resolved_recipe_round_trips_through_toml(tmp_path, registry):
    recipe = validate(tiny_tables(tmp_path, 'run.name="quote \\" and \\\\ slash"'), registry)
    assert tomllib.loads(recipe.to_toml()) == recipe.tables
    assert validate(tomllib.loads(recipe.to_toml()), registry).tables == recipe.tables


def test_dump_toml_handles_nested_tables_and_special_floats():
    tables = {"a": {"x": float("inf"), "b": {"c": [1, 2.5, "s"], "d": False}}, "e": {}}
    assert tomllib.loads(dump_toml(tables)) == tables


def test_fixed_values_hold_what_shapes_models_and_optimisation(tmp_path, registry):
    fixed = validate(tiny_tables(tmp_path), registry).fixed_values()
    assert {
        "generator.width",
        "data.resolution",
        "optim.generator.lr",
        "train.batch_size",
        "train.n_critic",
        "loss.name",
    } <= set(fixed)
    assert not {"train.steps", "train.log_every", "run.out_dir"} & set(fixed)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates_and_starts_with_its_command(path, registry):
    recipe = load_recipe(path, registry=registry)
    first = path.read_text().splitlines()[:4]
    assert first[0].startswith("#")
    assert any(f"ganforge {path.parent.name}/{path.name}" in line for line in first)
    assert any(
        "=" in line and "ganforge" in line
        for line in path.read_text().splitlines()
        if line.startswith("#") and line.count(" ") > 3
    )
    assert recipe.get("train.steps") > 0


def test_validate_command_prints_ok(capsys):
    assert main(["validate", str(RECIPES[0])]) == 0
    assert capsys.readouterr().out.strip() == "ok"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["validate", "missing.toml"], "recipe file not found: missing.toml"),
        (["missing.toml"], "recipe file not found"),
        (["validate"], "the following arguments are required: recipe"),
        (["frobnicate", "x"], "recipe file not found: frobnicate"),
        (["plugins", "--jsn"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2_with_one_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert "validate" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert ganforge.__version__ in capsys.readouterr().out


def test_cli_subprocess_reports_a_bad_recipe_without_traceback(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text(dump_toml({**TINY, "train": {"steps": "many"}}))
    done = subprocess.run(
        [sys.executable, "-m", "ganforge", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "train.steps: expected an integer, got str 'many'" in done.stderr
    assert "Traceback" not in done.stderr
