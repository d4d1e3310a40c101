"""The README's promises: its commands and its plugin example work as written."""

from __future__ import annotations

import re
import subprocess
import types

import ganforge
from conftest import ROOT
from ganforge.plugins import Plugins

README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_fresh_machine_commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    quickstart, tests = blocks[0], blocks[1]
    assert "pip install torch==2.13.0 -e ." in quickstart
    assert quickstart.endswith("python -m ganforge recipes/quickstart.toml")
    assert 'pip install torch==2.13.0 -e ".[test,deepspeed]"' in tests and tests.endswith("pytest")
    assert README.index(tests) < 800  # within the README's first lines


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"command=\$\((awk .*?)\)\n", script).group(1)
    command = subprocess.run(
        ["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert command == re.findall(r"```bash\n(.*?)\n```", README, re.S)[1]


def test_readme_plugin_example_registers_a_working_loss(tiny):
    code = re.search(r"# ganforge_mygan/plugin.py\n(.*?)```", README, re.S).group(1)
    module = types.ModuleType("ganforge_mygan_plugin")
    exec(compile(code, "README plugin example", "exec"), module.__dict__)
    assert Plugins(extra=[("mygan", module)]).registry.get("loss", "my_lsgan").plugin == "mygan"
    trainer = tiny("loss.name=my_lsgan", "train.steps=2", extra=[("mygan", module)])
    trainer.fit()
    assert trainer.progress.skipped.item() == 0


def test_hookimpl_marker_is_the_public_entry():
    assert ganforge.hookimpl.project_name == "ganforge"
