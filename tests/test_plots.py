"""The training curve: raw loss, its moving average and the validation metrics per evaluation."""

import pytest

from domainlm import plots


def test_smoothed_is_a_trailing_moving_average():
    assert plots.smoothed([1.0, 3.0, 5.0, 7.0], window=2) == pytest.approx([1.0, 2.0, 4.0, 6.0])
    assert plots.smoothed([2.0] * 30) == pytest.approx([2.0] * 30)


def test_training_curve_draws_loss_average_and_validation(tmp_path, monkeypatch):
    drawn = []
    real = plots._save
    monkeypatch.setattr(
        plots,
        "_save",
        lambda fig, path: (
            drawn.extend(line.get_label() for a in fig.axes for line in a.get_lines()),
            real(fig, path),
        ),
    )
    history = [{"step": s, "train_loss": 1.0 / s} for s in range(1, 11)]
    history[4]["val_mse"], history[9]["val_mse"] = 0.5, 0.3
    plots.training_curve(history, tmp_path / "curve.png")
    assert drawn == ["train_loss", "train_loss (moving average)", "val_mse"]
    assert (tmp_path / "curve.png").stat().st_size > 0
