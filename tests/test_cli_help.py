"""What `--help` and the bench table show: train's defaults (restated in the CLI, so they must agree with
TrainConfig), no value type for flags, and a bench table that is not cut to 80 columns in a log."""

import contextlib
import dataclasses
import io
import pathlib
import re

from typer.testing import CliRunner

from cli_helpers import invoke
from domainlm.cli import app
from domainlm.cli.tagllm import TRAIN_DEFAULTS
from domainlm.training import TrainConfig


def test_train_help_defaults_are_train_configs():
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert {name: defaults[name] for name in TRAIN_DEFAULTS} == TRAIN_DEFAULTS


def test_train_help_shows_defaults_and_no_bool_type():
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", res.output).split())  # help without its box
    for shown in ("(default: 2.0)", "(default: 0.0001)", "(default: 4)", "(default: error)", "(default: 50)"):
        assert shown in text
    assert "<bool>" not in text and "--checkpoint-every" in text


def test_bench_table_is_whole_in_a_log():
    from domainlm.cli.bench import print_table

    row = {"method": "gradient_boosting", "fold": "test", "trainable_params": 147841, "seconds": 12.0}
    row.update({f"test_{m}": 0.012345 for m in ("mse", "mae", "pearson", "spearman", "rm2")})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_table([row], "qed", pathlib.Path("runs/bench"))
    assert "test_spearman" in out.getvalue() and "gradient_boosting" in out.getvalue()
    assert invoke("bench", "--help").exit_code == 0
