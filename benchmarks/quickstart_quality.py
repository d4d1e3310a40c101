"""Quickstart quality vs the plain PyTorch loop, at equal wall-clock time.

1. Trains ``recipes/quickstart.toml`` with ganforge in a subprocess and times the whole
   process (W, including start-up, data loading, sample grids and export).
2. Trains ``/work/shared/baselines/digits_dcgan_plain.py`` with ``T = W`` seconds. This is the
   generous choice for the baseline: T bounds only its training loop, so its imports and PNG
   writing come on top, while ganforge's start-up and export are inside W.
3. Scores 1000 samples of each, and the real held-out digits as a ceiling, with a small CNN
   digit classifier trained here on real 32x32 digits: Frechet distance of its penultimate
   features to the real training split's (lower is better), mean max-softmax confidence,
   classes holding at least 5% of the samples, and KL(class histogram || uniform).

    python benchmarks/quickstart_quality.py                # full run, about 10 minutes
    python benchmarks/quickstart_quality.py --steps 100    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path("/work/shared/baselines/digits_dcgan_plain.py")


def run_ganforge(out: Path, steps: int | None) -> dict:
    """Train the quickstart recipe; return its whole-process wall time and training rate."""
    args = [sys.executable, "-m", "ganforge", "recipes/quickstart.toml", f"run.out_dir={out}"]
    args += [f"train.steps={steps}"] if steps else []
    t0 = time.perf_counter()
    with open(out.parent / "ganforge.log", "w") as log:
        subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    img_s = np.mean([m["images_per_s"] for m in metrics[1:] or metrics])  # skip warm-up window
    return {"steps": metrics[-1]["step"], "wall": wall, "s_per_step": 64 / img_s}


def run_plain(out: Path, budget: float) -> dict:
    """Train the plain loop for ``budget`` seconds; parse its ``steps N s/step X`` line."""
    env = {**os.environ, "T": f"{budget:.1f}", "W": "32", "B": "64"}  # its W is the width
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(BASELINE), str(out)], env=env, check=True,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out.parent / "plain.log").write_text(done.stdout + done.stderr)
    steps, s_per_step = re.search(r"steps (\d+) s/step ([\d.e-]+)", done.stdout).groups()
    return {"steps": int(steps), "wall": wall, "budget": budget, "s_per_step": float(s_per_step)}


def ganforge_samples(run_dir: Path, n: int) -> torch.Tensor:
    """Rebuild the exported generator from its safetensors metadata and sample fixed latents."""
    from ganforge_plugins.dcgan import DCGANGenerator

    with safe_open(str(run_dir / "generator.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["ganforge"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    out = meta["output"]
    g = DCGANGenerator(resolution=out["resolution"], channels=out["channels"],
                       **meta["generator"]["kwargs"])
    g.load_state_dict(tensors)
    z = torch.randn(n, *meta["latent"]["shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = g.eval()(z)
    return quantize(x)  # the same 8-bit rounding the baseline's PNGs go through


def png_samples(folder: Path, n: int) -> torch.Tensor:
    """The baseline's first ``n`` PNGs as (n, 1, 32, 32) floats in [-1, 1]."""
    files = sorted(folder.glob("*.png"))[:n]
    arr = np.stack([np.asarray(Image.open(p).convert("L")) for p in files])
    return torch.from_numpy(arr).float().div(127.5).sub(1).unsqueeze(1)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats through 8 bits and back, as saving a PNG does."""
    return ((x + 1) / 2 * 255).clamp(0, 255).round().div(127.5).sub(1)


class DigitNet(nn.Module):
    """A small CNN; ``features`` is its 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        conv = [nn.Sequential(nn.Conv2d(c, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
                for c, c2 in ((1, 16), (16, 32), (32, 64))]
        self.features = nn.Sequential(*conv, nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits upsampled to 32x32 exactly as the baseline does, in [-1, 1]."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
    x = F.interpolate(x / 16, size=32, mode="bilinear", align_corners=False) * 2 - 1
    return quantize(x), torch.tensor(d.target)


def train_classifier(x, y, epochs: int = 30) -> DigitNet:
    torch.manual_seed(0)
    net, n = DigitNet(), len(x)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(64):
            xb = torch.roll(x[idx], tuple(torch.randint(-2, 3, (2,)).tolist()), (2, 3))  # jitter
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets, in float64."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    try:
        from scipy.linalg import sqrtm

        covmean = np.real(sqrtm(c1 @ c2))
    except ImportError:  # tr sqrt(C1 C2) == tr sqrt(S C2 S) with S = sqrt(C1)
        s = sqrtm_psd(c1)
        covmean = sqrtm_psd(s @ c2 @ s)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


@torch.no_grad()
def score(net: DigitNet, x: torch.Tensor, ref: np.ndarray) -> dict:
    feats = net.features(x)
    probs = net.head(feats).softmax(1)
    hist = np.bincount(probs.argmax(1).numpy(), minlength=10) / len(x)
    nz = hist[hist > 0]
    return {"fd": frechet(feats.double().numpy(), ref), "conf": probs.max(1).values.mean().item(),
            "covered": int((hist >= 0.05).sum()), "kl": float((nz * np.log(nz * 10)).sum())}


def save_grid(x: torch.Tensor, path: Path, pad: int = 2) -> None:
    """The first 64 images as an 8x8 grid PNG (white-ish padding between tiles)."""
    tiles = ((x[:64, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    s = tiles.shape[-1] + pad
    grid = np.full((8 * s + pad, 8 * s + pad), 128, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, 8)
        grid[pad + r * s: pad + r * s + t.shape[0], pad + c * s: pad + c * s + t.shape[1]] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/quickstart_quality"))
    p.add_argument("--steps", type=int, default=None, help="override train.steps (smoke runs)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--eval-only", action="store_true", help="rescore the runs already in --out")
    a = p.parse_args()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timing_file = out / "timings.json"
    if a.eval_only:
        gf, plain = json.loads(timing_file.read_text())
    else:
        print(f"load average before: {os.getloadavg()}", flush=True)
        gf = run_ganforge(out / "ganforge", a.steps)
        print(f"ganforge: {gf}", flush=True)
        plain = run_plain(out / "plain", gf["wall"])  # generous: T = W, see the docstring
        print(f"plain: {plain}", flush=True)
        print(f"load average after: {os.getloadavg()}", flush=True)
        timing_file.write_text(json.dumps([gf, plain]))

    x, y = real_digits()
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    t0 = time.perf_counter()
    net = train_classifier(xtr, ytr)
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
        ref = net.features(xtr).double().numpy()
    print(f"classifier: held-out accuracy {acc:.4f} ({len(xte)} digits), "
          f"trained in {time.perf_counter() - t0:.1f} s")
    assert acc >= 0.97, f"classifier too weak to judge samples: {acc:.4f}"

    sets = {"ganforge": ganforge_samples(out / "ganforge", a.samples),
            "plain": png_samples(out / "plain", a.samples)}
    for name, s in sets.items():
        save_grid(s, ROOT / "docs" / "img" / f"quickstart_{name}.png")
    rows = [("real held-out", "", "", score(net, xte, ref)),
            ("ganforge quickstart", gf["steps"], f"{gf['wall']:.0f}",
             score(net, sets["ganforge"], ref)),
            ("plain loop", plain["steps"], f"{plain['wall']:.0f} (T={plain['budget']:.0f})",
             score(net, sets["plain"], ref))]
    print(f"\nganforge s/step {gf['s_per_step']:.4f}, plain s/step {plain['s_per_step']:.4f}\n")
    print("| samples | steps | wall s | FD (lower better) | confidence | classes >= 5% | KL to uniform |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, steps, wall, m in rows:
        print(f"| {name} | {steps} | {wall} | {m['fd']:.2f} | {m['conf']:.3f} | "
              f"{m['covered']}/10 | {m['kl']:.3f} |")


if __name__ == "__main__":
    main()
