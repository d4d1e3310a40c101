"""Run a plain baseline script as it is, then draw more samples from the generator it trained.

    python benchmarks/baseline_samples.py SCRIPT OUT_DIR NUM [CROP]

The baselines in ``/work/shared/baselines`` write 1,000 PNG samples; FD at 1,000 samples sits
on a large small-sample floor (docs/benchmarks/fashion_mnist.md). This runner executes
SCRIPT unmodified as
``__main__`` (``runpy``: its arguments, environment, seed, timing loop and PNGs are its own),
then takes the generator it left in the global ``g`` (already in eval mode, as the script
sampled it) and writes PNG samples ``1000.png``, ``1001.png``, … up to NUM in all, the same
way the script writes its own: latents from the script's own global random stream, ``[-1, 1]``
to bytes by rounding, the ``CROP`` border (2 for the 28×28 images padded to 32) cut off.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch
from PIL import Image


def main() -> None:
    script, out, num = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    crop = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    sys.argv = [script, str(out)]
    names = runpy.run_path(script, run_name="__main__")
    g = names["g"]
    have = len(list(out.glob("*.png")))
    latent = next(m for m in g.modules() if hasattr(m, "in_channels")).in_channels
    with torch.no_grad():
        for start in range(have, num, 500):
            n = min(500, num - start)
            imgs = g(torch.randn(n, latent, 1, 1))[:, 0]
            if crop:
                imgs = imgs[:, crop:-crop, crop:-crop]
            pixels = ((imgs + 1) / 2 * 255).round().clamp(0, 255).byte().numpy()
            for i, im in enumerate(pixels):
                Image.fromarray(im).save(out / f"{start + i:04d}.png")
    print(f"samples {max(have, num)}", flush=True)


if __name__ == "__main__":
    main()
