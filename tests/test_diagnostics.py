"""What a run tells its user: the critic's accuracy and kimg in the log, one warning when
training goes wrong, and a summary when it ends."""

from __future__ import annotations

import math

import pytest

from conftest import TOY_EVAL_RUN
from ganforge.diagnostics import Watch
from ganforge.trainer import read_metrics


def test_log_has_accuracy_in_range_and_kimg_counts_real_images(tiny, one_thread):
    trainer = tiny("train.steps=3", "train.n_critic=2")
    trainer.fit()
    records = read_metrics(trainer.run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert 0 <= record["d_accuracy"] <= 1
        # 8 images a batch, 2 critic updates a step
        assert record["kimg"] == pytest.approx(record["step"] * 2 * 8 / 1000)


def test_a_diverging_run_warns_once_and_the_summary_names_its_files(tiny, one_thread, capsys):
    # A huge D learning rate blows the losses up within two steps (seeded: the same every run).
    trainer = tiny("train.steps=6", "optim.discriminator.lr=1e3")
    path = trainer.fit()
    out = capsys.readouterr().out
    assert out.count("ganforge: warning: d_loss is diverging") == 1
    summary = out[out.index("ganforge: done:") :]
    assert "steps 0 -> 6" in summary and "48 real images" in summary and "images/s" in summary
    assert f"d_loss {read_metrics(trainer.run_dir)[-1]['d_loss']:.4g}" in summary
    assert f"export: {path}" in summary
    assert f"metrics: {trainer.run_dir / 'metrics.jsonl'}" in summary


def test_a_healthy_run_prints_no_warning_and_its_final_eval(tiny, one_thread, capsys):
    trainer = tiny(*TOY_EVAL_RUN)
    trainer.fit()
    out = capsys.readouterr().out
    assert "warning" not in out
    final_eval = [r for r in read_metrics(trainer.run_dir) if any(k.startswith("eval/") for k in r)]
    (name, value), *_ = [(k, v) for k, v in final_eval[-1].items() if k.startswith("eval/")]
    assert f"final eval (step 2): {name.removeprefix('eval/')} {value:.4g}" in out


def _values(step, accuracy, d_loss=0.7, g_loss=0.7):
    return {"step": step, "d_accuracy": accuracy, "d_loss": d_loss, "g_loss": g_loss}


def test_pinned_accuracy_warns_after_three_log_steps_in_a_row_and_only_once():
    watch = Watch()
    assert watch.check(_values(1, 1.0)) == []
    assert watch.check(_values(2, 0.995)) == []
    assert watch.check(_values(3, 0.5)) == []  # a break resets the count
    assert watch.check(_values(4, 1.0)) == [] and watch.check(_values(5, 1.0)) == []
    (warning,) = watch.check(_values(6, 1.0))
    assert "D's accuracy" in warning and "step 6" in warning
    assert watch.check(_values(7, 1.0)) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, 500.0])
def test_a_non_finite_or_exploding_loss_warns(bad):
    watch = Watch()
    assert watch.check(_values(1, 0.5, g_loss=2.0)) == []
    assert watch.check(_values(2, 0.5, g_loss=150.0)) == []  # 75x: not yet
    (warning,) = watch.check(_values(3, 0.5, g_loss=bad))
    assert "g_loss" in warning and "step 3" in warning
