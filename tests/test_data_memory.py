"""A process's private memory does not grow with the data set: training reads batches from the
memory-mapped store, shared through the page cache, and holds no private copy of it.

Measured as ``RssAnon`` (``/proc/PID/status``): anonymous pages only, not the store's mapped
file pages, which every process on a node shares. Each size trains in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="RssAnon is read from Linux's /proc"
)

#: Trains from a stored data set of N random 32×32 RGB images, and prints the growth of its
#: private memory from before the trainer is built to after a few steps.
PROBE = r"""
import json, sys
from pathlib import Path

import numpy as np

import ganforge
from ganforge.data import DataSource, ImageData


def rss_anon_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])


class Stored:
    @ganforge.hookimpl
    def ganforge_register_datasets(self, register):
        def stored(resolution: int, size: int = 0):
            def load():
                rng = np.random.default_rng(size)
                shape = (size, 3, resolution, resolution)
                return ImageData(rng.integers(0, 256, shape, dtype=np.uint8))

            return DataSource(f"memory-probe-{size}-{resolution}", load)

        register("stored", stored)


from ganforge.data import open_store
from ganforge.plugins import Plugins
from ganforge.recipe import validate
from ganforge.trainer import Trainer

size, out_dir, prepare = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "prepare"
plugins = Plugins(extra=[("stored", Stored())])
if prepare:  # decode once into the store, as a first run does
    open_store(plugins.registry.build("dataset", "stored", {"resolution": 32}, {"size": size}), 32)
    sys.exit(0)
tables = {
    "run": {"name": "memory", "seed": 0, "out_dir": out_dir},
    "data": {"name": "stored", "resolution": 32, "size": size},
    "generator": {"name": "dcgan", "latent_dim": 8, "width": 4},
    "discriminator": {"name": "dcgan", "width": 4},
    "loss": {"name": "bce"},
    "train": {"steps": 2, "batch_size": 64},
}
recipe = validate(tables, plugins.registry)
before = rss_anon_kib()
trainer = Trainer(recipe, plugins)
for step in range(20):  # batches from all over the store
    trainer.train_step(step, measure=False)
print(json.dumps({"growth_kib": rss_anon_kib() - before}))
"""


def private_growth_mib(tmp_path: Path, size: int) -> float:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    run = [sys.executable, str(script), str(size), str(tmp_path / f"run{size}")]
    for phase in ("prepare", "train"):
        done = subprocess.run([*run, phase], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_kib"] / 1024


def test_private_memory_of_training_does_not_grow_with_the_data_set(tmp_path):
    small, large = 2_000, 20_000  # 6 MiB and 59 MiB of images
    data_mib = (large - small) * 3 * 32 * 32 / 2**20
    grown = private_growth_mib(tmp_path, large) - private_growth_mib(tmp_path, small)
    # A private copy of the store would add all of `data_mib`; indices and labels of 18,000
    # more samples are well under a megabyte.
    assert grown < data_mib / 4, f"{grown:.1f} MiB more private memory for {data_mib:.0f} MiB"
