"""The ``inception`` feature extractor: the FID Inception-v3 (2048-d pool features, 1008 logits).

The network is the one pytorch-fid and torch-fidelity use for FID (torchvision's Inception-v3
layout with the FID variants of its A, C and E blocks: average pools that exclude padding, and
a max pool in the last block), defined here because torchvision does not import beside every
torch. Its weights are the usual ``pt_inception-2015-12-05-6726825d.pth`` (converted from the
TensorFlow FID graph), found, in order, at ``path``, in ``$GANFORGE_CACHE_DIR/weights/``, in
the torch hub cache (``~/.cache/torch/hub/checkpoints/``), or downloaded when ``download`` is
allowed and the machine is online.

Trust: the ``.pth`` is a pickle-format file. It is read only after its size and its whole
SHA-256 match the one published file (``SOURCE_SHA256``), and then with ``torch.load(...,
weights_only=True)`` (torch's restricted reader: tensors and plain containers, no imports, no
code). It is converted once to ``…-6726825d.safetensors`` in ``$GANFORGE_CACHE_DIR/weights/``,
and the converted file's own SHA-256 is recorded beside it (``….safetensors.sha256``) and
checked at every load. A converted file that does not match its record (or has none) is never
used: it is converted again from the ``.pth``, or refused when the ``.pth`` is not here.

Preprocessing follows pytorch-fid: images in [-1, 1] are resized to 299×299 bilinearly
(``align_corners=False``) and grey images repeated to 3 channels.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ganforge import hookimpl
from ganforge.data import cache_root
from ganforge.errors import GanforgeError
from ganforge.runfiles import atomic_write, sha256_file

FILE = "pt_inception-2015-12-05-6726825d.pth"
SHA256_PREFIX = "6726825d"
# The published file (pytorch-fid's release "fid_weights"; torch-fidelity's v0.2.0 file is the
# same bytes): the whole digest, not the 8-digit prefix its name carries.
SOURCE_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
SOURCE_BYTES = 95_628_359
URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FILE}"


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):  # the FID blocks' average pool leaves padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            bd = layer(bd)
        bd = self.branch7x7dbl_5(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the last block of the FID graph pools with max
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the FID graph: ``forward`` gives 2048-d pool features and 1008 logits
    (without the fc bias, as the Inception Score's reference implementation takes them)."""

    num_classes = 1008

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.fingerprint = "fid-inception-v3-untrained"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1], any size, 1 or 3 channels -> (B×2048 features, B×1008 logits)."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] != 3:  # e.g. RGBA: the colour channels
            x = x[:, :3]
        # pytorch-fid: resize in [0, 1], then scale to [-1, 1].
        x = (x.float() + 1) / 2
        x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        features = F.adaptive_avg_pool2d(x, 1).flatten(1)
        # The Inception Score's reference code takes the logits without the fc bias.
        return features, features @ self.fc.weight.T


def _candidates(path: str) -> list[Path]:
    if path:
        return [Path(path).expanduser()]
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return [cache_root() / "weights" / FILE, hub / "hub" / "checkpoints" / FILE]


def converted_path() -> Path:
    """Where the converted weights (safetensors) and their recorded SHA-256 live."""
    return cache_root() / "weights" / (FILE.removesuffix(".pth") + ".safetensors")


def _record(converted: Path) -> Path:
    return converted.with_name(converted.name + ".sha256")


def load_converted() -> dict[str, torch.Tensor] | None:
    """The converted weights if their SHA-256 matches the one recorded at conversion, else
    None (missing, damaged, planted or unrecorded: never used)."""
    converted = converted_path()
    if not converted.is_file():
        return None
    try:
        recorded = json.loads(_record(converted).read_text())
        if recorded.get("source_sha256") != SOURCE_SHA256:
            return None
        if sha256_file(converted) != recorded.get("sha256"):
            return None
        return load_file(str(converted))
    except (OSError, ValueError, AttributeError, SafetensorError):
        return None


def check_source(path: Path) -> None:
    """Refuse anything but the published ``.pth`` (size, then the whole SHA-256) before any
    byte of it is unpickled."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise GanforgeError(f"cannot read the FID Inception weights {path}: {err}") from None
    digest = sha256_file(path) if size == SOURCE_BYTES else ""
    if digest != SOURCE_SHA256:
        seen = f"SHA-256 {digest[:16]}..." if digest else f"{size:,} bytes"
        raise GanforgeError(
            f"{path} is not the FID Inception weights ({FILE}): it has {seen}, the published "
            f"file has {SOURCE_BYTES:,} bytes and SHA-256 {SOURCE_SHA256}"
        )


def convert(path: Path) -> dict[str, torch.Tensor]:
    """Check the ``.pth`` at ``path`` (size and SHA-256, before reading a byte of it as a
    pickle), read its tensors without running code, and keep them converted, with a record."""
    check_source(path)
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
    tensors = {k: v.contiguous() for k, v in state.items()}
    converted = converted_path()
    converted.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(converted, lambda tmp: save_file(tensors, str(tmp)))
    record = {"sha256": sha256_file(converted), "source_sha256": SOURCE_SHA256}
    atomic_write(_record(converted), lambda tmp: tmp.write_text(json.dumps(record) + "\n"))
    return tensors


def inception_extractor(path: str = "", download: bool = False) -> FIDInceptionV3:
    """The FID Inception-v3 with its standard weights (see the module docstring for where)."""
    tensors = load_converted()
    found = next((p for p in _candidates(path) if p.is_file()), None)
    if tensors is None and found is None and download:
        found = cache_root() / "weights" / FILE
        try:
            found.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(found, lambda tmp: urllib.request.urlretrieve(URL, tmp))
        except OSError as err:
            raise GanforgeError(f"could not download the FID Inception weights: {err}") from None
    if tensors is None and found is None:
        where = "\n  ".join(str(p) for p in _candidates(path))
        unusable = (
            f" ({converted_path()} does not match the SHA-256 recorded when ganforge converted "
            "it, or has no record: it is not used)"
            if converted_path().is_file()
            else ""
        )
        raise GanforgeError(
            f"the FID Inception weights ({FILE}) are not on this machine{unusable}. Put the "
            f"file at one of:\n  {where}\nor set [eval.extractor_options] path = ..., or allow "
            f"download = true on a machine with internet (from {URL})"
        )
    net = FIDInceptionV3()
    net.load_state_dict(tensors if tensors is not None else convert(found))
    net.fingerprint = f"fid-inception-v3-{SHA256_PREFIX}"
    return net.eval().requires_grad_(False)


@hookimpl
def ganforge_register_feature_extractors(register):
    register("inception", inception_extractor)
