"""``ganforge generate MODEL --interpolate N``: spherical interpolation between latents,
written as a grid (a row per pair of ends) and an animated GIF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ganforge
from ganforge.cli import main
from ganforge.export import latents
from ganforge.interpolation import slerp
from ganforge.runfiles import image_grid

pytestmark = pytest.mark.usefixtures("one_thread")
TILE = 16 + 2  # the tiny recipe's resolution plus the grid's padding


def test_slerp_starts_and_ends_at_the_latents_and_walks_the_great_circle():
    rng = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, generator=rng), torch.randn(3, 8, generator=rng)
    path = slerp(a, b, 7)
    assert path.shape == (3, 7, 8)
    assert torch.equal(path[:, 0], a) and torch.equal(path[:, -1], b)
    # Equal-norm ends: every point keeps the norm (a straight line would dip).
    b_same = b / b.norm(dim=1, keepdim=True) * a.norm(dim=1, keepdim=True)
    on_sphere = slerp(a, b_same, 7)
    assert torch.allclose(on_sphere.norm(dim=2), a.norm(dim=1, keepdim=True).expand(3, 7))
    assert (((a + b_same) / 2).norm(dim=1) < a.norm(dim=1) * 0.99).all()
    # The angle to the start grows evenly.
    cos = torch.nn.functional.cosine_similarity(on_sphere.double(), a[:, None].double(), dim=2)
    angles = torch.arccos(cos.clamp(-1, 1))
    assert torch.allclose(angles, angles[:, -1:] * torch.linspace(0, 1, 7).double(), atol=1e-3)
    # Norms between different ends stay between them.
    norms = path.norm(dim=2)
    low = torch.minimum(a.norm(dim=1), b.norm(dim=1))[:, None] - 1e-5
    high = torch.maximum(a.norm(dim=1), b.norm(dim=1))[:, None] + 1e-5
    assert ((norms >= low) & (norms <= high)).all()


def test_slerp_of_parallel_latents_is_a_straight_line():
    a = torch.tensor([[1.0, 2.0, 2.0]])
    path = slerp(a, 3 * a, 3)
    assert torch.allclose(path, torch.stack([a, 2 * a, 3 * a], 1)) and path.isfinite().all()


@pytest.fixture
def export_file(tiny):
    return tiny("train.steps=1").fit()


def tile(picture: np.ndarray, row: int, col: int) -> np.ndarray:
    return picture[2 + row * TILE : row * TILE + TILE, 2 + col * TILE : col * TILE + TILE]


def test_interpolate_writes_the_grid_and_a_gif_of_n_frames(export_file, capsys):
    assert main(["generate", str(export_file), "--interpolate", "5", "--out", "x.png"]) == 0
    assert "x.png and x.gif" in capsys.readouterr().out
    grid = np.asarray(Image.open("x.png"))
    assert grid.shape == (4 * TILE + 2, 5 * TILE + 2, 3)  # 4 pairs of ends (default), 5 steps
    generator, info = ganforge.load_generator(export_file)
    ends = generator(latents(info, 8, 0))
    for row in range(4):  # first and last columns are the ends, exactly
        assert np.array_equal(tile(grid, row, 0), image_grid(ends[2 * row : 2 * row + 1], pad=0))
        assert np.array_equal(tile(grid, row, 4), image_grid(ends[2 * row + 1 :][:1], pad=0))
    gif = Image.open("x.gif")
    assert gif.n_frames == 5 and gif.info["loop"] == 0
    gif.seek(0)
    assert np.array_equal(np.asarray(gif.convert("RGB")).shape, image_grid(ends[0::2]).shape)
    assert (
        main(
            ["generate", str(export_file), "--interpolate", "3", "--num", "2", "--out", "only.gif"]
        )
        == 0
    )
    assert Image.open("only.gif").n_frames == 3
    assert not (export_file.parent / "only.png").exists()


def test_a_conditional_interpolation_keeps_one_class_per_row(tiny):
    trainer = tiny("data.num_classes=3", "data.conditional=true", "train.steps=1")
    path = trainer.fit()
    assert main(["generate", str(path), "--interpolate", "2", "--out", "c.png"]) == 0
    grid = np.asarray(Image.open("c.png"))
    assert grid.shape[0] == 3 * TILE + 2  # a row per class
    z = latents(ganforge.load_generator(path)[1], 6, 0)
    expected = trainer.outputs.generate(z, torch.tensor([0, 0, 1, 1, 2, 2]))
    for row in range(3):
        for col in range(2):
            cell = expected[2 * row + col : 2 * row + col + 1]
            assert np.array_equal(tile(grid, row, col), image_grid(cell, pad=0))
    assert (
        main(
            [
                "generate",
                str(path),
                "--interpolate",
                "2",
                "--class",
                "2",
                "--num",
                "1",
                "--out",
                "one.png",
            ]
        )
        == 0
    )
    assert np.array_equal(
        tile(np.asarray(Image.open("one.png")), 0, 0),
        image_grid(trainer.outputs.generate(z[:1], torch.tensor([2])), pad=0),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interpolate", "1", "--out", "x.png"], "at least 2 steps"),
        (["--interpolate", "-3", "--out", "x.png"], "at least 2 steps"),
        (["--interpolate", "4", "--num", "0", "--out", "x.png"], "must be at least 1"),
        (["--interpolate", "4", "--out", "x.npy"], "a .png or a .gif"),
        (["--interpolate", "4", "--out-dir", "d"], "give --out x.png or x.gif"),
        (["--interpolate", "x", "--out", "x.png"], "invalid int value"),
    ],
)
def test_bad_interpolation_options_exit_2(args, message, export_file, capsys):
    assert main(["generate", str(export_file), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
