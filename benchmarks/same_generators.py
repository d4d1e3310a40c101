"""Do two versions of ganforge train the same generator? Bit for bit, on this machine.

Trains each recipe with the code of a git revision (``--before``, checked out into a
temporary worktree) and with the working tree, in fresh processes with the same overrides,
and compares the exported generators' tensors exactly. A change to the training loop that
should leave existing recipes alone (a new contract, a refactor) must print ``identical``
for every recipe.

    python benchmarks/same_generators.py --before HEAD recipes/quickstart.toml \\
        recipes/fashion_mnist.toml train.steps=30

Overrides apply to every recipe. Plugins the revision does not have are disabled for its
runs (``GANFORGE_DISABLE_PLUGINS``), so that a new built-in plugin does not stop it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def new_plugins(before: Path) -> list[str]:
    """Built-in plugins of the working tree that the revision at ``before`` lacks."""
    import tomllib

    def plugins(root: Path) -> dict:
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        return project["entry-points"]["ganforge"]

    return sorted(set(plugins(ROOT)) - set(plugins(before)))


def train(code: Path, recipe: str, out: Path, overrides: list[str], disabled: list[str]) -> Path:
    env = dict(os.environ, PYTHONPATH=f"{code}{os.pathsep}{code / 'plugins'}")
    if disabled:
        env["GANFORGE_DISABLE_PLUGINS"] = ",".join(disabled)
    command = [sys.executable, "-m", "ganforge", str(ROOT / recipe), f"run.out_dir={out}"]
    command += ["train.resume=never", *overrides]
    done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{recipe} failed with {code}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return out / "generator.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", help="recipes, then key=value overrides")
    parser.add_argument("--before", default="HEAD", help="the git revision to compare with")
    args = parser.parse_args()
    recipes = [r for r in args.recipes if "=" not in r]
    overrides = [r for r in args.recipes if "=" in r]
    with tempfile.TemporaryDirectory(prefix="ganforge-same-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(before), args.before],
            cwd=ROOT,
            check=True,
        )
        try:
            disabled = new_plugins(before)
            different = 0
            for recipe in recipes:
                name = Path(recipe).stem
                a = load_file(train(before, recipe, Path(tmp) / f"{name}_a", overrides, disabled))
                b = load_file(train(ROOT, recipe, Path(tmp) / f"{name}_b", overrides, []))
                same = a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
                different += not same
                print(f"{recipe}: {'identical' if same else 'DIFFERENT'} ({len(a)} tensors)")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT)
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
