"""Quickstart quality vs the plain PyTorch loop, at equal wall-clock time.

1. Trains ``recipes/quickstart.toml`` with ganforge in a subprocess and times the whole
   process (W, including start-up, data loading, sample grids and export).
2. Trains ``/work/shared/baselines/digits_dcgan_plain.py`` with ``T = W`` seconds. This is the
   generous choice for the baseline: T bounds only its training loop, so its imports and PNG
   writing come on top, while ganforge's start-up and export are inside W.
3. Scores 1000 samples of each, and the real held-out digits as a ceiling, with a small CNN
   digit classifier trained here on real 32x32 digits: Frechet distance of its (pre-ReLU)
   penultimate features to the real training split's (lower is better), mean max-softmax confidence,
   classes holding at least 5% of the samples, and KL(class histogram || uniform).

    python benchmarks/quickstart_quality.py                # full run, about 10 minutes
    python benchmarks/quickstart_quality.py --steps 100    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from scipy.linalg import sqrtm
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path("/work/shared/baselines/digits_dcgan_plain.py")


def timed(args: list[str], log: Path, **kw) -> tuple[float, float, str]:
    """Run ``args``; return its wall seconds, CPU seconds (user + sys) and output."""
    cpu0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, **kw)
    wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    log.write_text(done.stdout + done.stderr)
    return wall, cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, done.stdout


def run_ganforge(out: Path, steps: int | None) -> dict:
    """Train the quickstart recipe; its s/step is read from metrics.jsonl (100-step windows)."""
    args = [sys.executable, "-m", "ganforge", "recipes/quickstart.toml", f"run.out_dir={out}"]
    args += [f"train.steps={steps}"] if steps else []
    wall, cpu, _ = timed(args, out.with_suffix(".log"))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_window = [64 / m["images_per_s"] for m in metrics]  # batch 64, n_critic 1
    median = float(np.median(per_window))  # steady state: robust to windows slowed by others
    return dict(
        steps=metrics[-1]["step"],
        wall=wall,
        cpu=cpu,
        s_per_step=np.mean(per_window),
        s_per_step_median=median,
    )


def run_plain(out: Path, budget: float) -> dict:
    """Train the plain loop for ``budget`` seconds; parse its ``steps N s/step X`` line."""
    env = {**os.environ, "T": f"{budget:.1f}", "W": "32", "B": "64"}  # its W is the width
    wall, cpu, stdout = timed(
        [sys.executable, str(BASELINE), str(out)], out.with_suffix(".log"), env=env
    )
    steps, s_per_step = re.search(r"steps (\d+) s/step ([\d.e-]+)", stdout).groups()
    return dict(steps=int(steps), wall=wall, cpu=cpu, budget=budget, s_per_step=float(s_per_step))


def machine_load() -> str:
    """Load average and CPU pressure (share of time some task waited for a CPU)."""
    with open("/proc/pressure/cpu") as f:
        pressure = f.readline().split()[1:3]
    return f"load average {os.getloadavg()}, cpu pressure {' '.join(pressure)}"


def ganforge_samples(run_dir: Path, n: int) -> torch.Tensor:
    """Rebuild the exported generator from its safetensors metadata and sample fixed latents."""
    from ganforge_plugins.dcgan import DCGANGenerator

    with safe_open(str(run_dir / "generator.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["ganforge"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    out = meta["output"]
    g = DCGANGenerator(
        resolution=out["resolution"], channels=out["channels"], **meta["generator"]["kwargs"]
    )
    g.load_state_dict(tensors)
    z = torch.randn(n, *meta["latent"]["shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = g.eval()(z)
    return ((x + 1) / 2 * 255).clamp(0, 255).floor() / 127.5 - 1  # as the baseline's PNGs


def png_samples(folder: Path, n: int) -> torch.Tensor:
    """The baseline's first ``n`` PNGs as (n, 1, 32, 32) floats in [-1, 1]."""
    files = sorted(folder.glob("*.png"))[:n]
    arr = np.stack([np.asarray(Image.open(p).convert("L")) for p in files])
    return torch.from_numpy(arr).float().div(127.5).sub(1).unsqueeze(1)


class DigitNet(nn.Module):
    """A small CNN on 2x-average-pooled digits; ``features`` is its 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        conv = [
            nn.Sequential(
                nn.Conv2d(c, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2)
            )
            for c, c2 in ((1, 32), (32, 64))
        ]  # 16 -> 8 -> 4
        self.features = nn.Sequential(
            nn.AvgPool2d(2), *conv, nn.Flatten(), nn.Linear(64 * 16, 64)
        )  # features before the ReLU: after it, units dead on every input make covariances singular
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


def real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits upsampled to 32x32 exactly as the baseline does, in [-1, 1]."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
    x = F.interpolate(x / 16, size=32, mode="bilinear", align_corners=False) * 2 - 1
    return x, torch.tensor(d.target)


def train_classifier(x, y, epochs: int = 10) -> DigitNet:
    """Adam with +-2 px shifts, a few seconds on a quiet 2-core CPU."""
    torch.manual_seed(0)
    net, n = DigitNet(), len(x)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(64):
            xb = torch.roll(x[idx], tuple(torch.randint(-2, 3, (2,)).tolist()), (2, 3))  # jitter
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets, in float64."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = np.real(sqrtm(c1 @ c2))  # scipy comes with scikit-learn
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


@torch.no_grad()
def score(net: DigitNet, x: torch.Tensor, ref: np.ndarray) -> dict:
    """FD to ``ref`` features, mean confidence, classes with >= 5%, KL(histogram || uniform)."""
    feats = net.features(x)
    probs = net.head(feats).softmax(1)
    hist = np.bincount(probs.argmax(1).numpy(), minlength=10) / len(x)
    nz = hist[hist > 0]
    return {
        "fd": frechet(feats.double().numpy(), ref),
        "conf": probs.max(1).values.mean().item(),
        "covered": int((hist >= 0.05).sum()),
        "kl": float((nz * np.log(nz * 10)).sum()),
    }


def save_grid(x: torch.Tensor, path: Path, pad: int = 2) -> None:
    """The first 64 images as an 8x8 grid PNG (white-ish padding between tiles)."""
    tiles = ((x[:64, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    s = tiles.shape[-1] + pad
    grid = np.full((8 * s + pad, 8 * s + pad), 128, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, 8)
        grid[pad + r * s : pad + r * s + t.shape[0], pad + c * s : pad + c * s + t.shape[1]] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def cols(run: dict) -> tuple[int, str, str]:
    """Steps, wall (and CPU) seconds, s/step of one training run, as table cells."""
    wall = f"{run['wall']:.0f} (CPU {run['cpu']:.0f})"
    if "budget" in run:
        wall += f", T={run['budget']:.0f}"
    return run["steps"], wall, f"{run['s_per_step']:.3f}"


def main() -> None:
    """Train both (unless --eval-only), score both, save the grids, print the table."""
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
        print(f"before: {machine_load()}", flush=True)
        gf = run_ganforge(out / "ganforge", a.steps)
        print(f"ganforge: {gf}\nbetween: {machine_load()}", flush=True)
        plain = run_plain(out / "plain", gf["wall"])  # generous: T = W, see the docstring
        print(f"plain: {plain}", flush=True)
        print(f"after: {machine_load()}", flush=True)
        timing_file.write_text(json.dumps([gf, plain]))

    x, y = real_digits()
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    t0 = time.perf_counter()
    net = train_classifier(xtr, ytr)
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
        ref = net.features(xtr).double().numpy()
    print(
        f"classifier: held-out accuracy {acc:.4f} ({len(xte)} digits), "
        f"trained in {time.perf_counter() - t0:.1f} s"
    )
    assert acc >= 0.97, f"classifier too weak to judge samples: {acc:.4f}"

    sets = {
        "ganforge": ganforge_samples(out / "ganforge", a.samples),
        "plain": png_samples(out / "plain", a.samples),
    }
    for name, s in sets.items():
        save_grid(s, ROOT / "docs" / "img" / f"quickstart_{name}.png")
    rows = [
        ("real held-out", "", "", "", xte),
        ("ganforge quickstart", *cols(gf), sets["ganforge"]),
        ("plain loop", *cols(plain), sets["plain"]),
    ]
    print("\n| samples | steps | wall s | s/step | FD | confidence | classes >= 5% | KL |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, steps, wall, rate, samples in rows:
        m = score(net, samples, ref)
        print(
            f"| {name} | {steps} | {wall} | {rate} | {m['fd']:.2f} | {m['conf']:.3f} | "
            f"{m['covered']}/10 | {m['kl']:.3f} |"
        )


if __name__ == "__main__":
    main()
