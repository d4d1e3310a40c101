"""benchmarks/baseline_samples.py: a baseline script runs as it is, then its generator draws
more samples the way the script draws its own."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ROOT

SCRIPT = """
import os, sys, torch, torch.nn as nn
from PIL import Image
torch.manual_seed(0)
g = nn.Sequential(nn.ConvTranspose2d(5, 1, 8, 1, 0), nn.Tanh())
print("steps", 3, "s/step", 0.1, flush=True)
g.eval(); os.makedirs(sys.argv[1], exist_ok=True)
with torch.no_grad():
    imgs = g(torch.randn(4, 5, 1, 1))[:, 0, 2:6, 2:6]
for i, im in enumerate(((imgs + 1) / 2 * 255).round().clamp(0, 255).byte().numpy()):
    Image.fromarray(im).save(f"{sys.argv[1]}/{i:04d}.png")
"""


def test_the_baseline_runs_as_written_then_draws_more_samples(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(SCRIPT)
    out = tmp_path / "samples"
    runner = ROOT / "benchmarks" / "baseline_samples.py"
    done = subprocess.run(
        [sys.executable, str(runner), str(script), str(out), "10", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "steps 3" in done.stdout and "samples 10" in done.stdout  # the script's own output
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:04d}.png" for i in range(10)]
    images = np.stack([np.asarray(Image.open(f)) for f in files])
    assert images.shape == (10, 4, 4)  # cropped as the script crops its own
    assert len({im.tobytes() for im in images}) == 10  # new latents for every extra sample
