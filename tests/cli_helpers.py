"""Shared by the `domainlm train / eval / predict` tests: the app in-process, small CSVs and a toy task."""

import csv
import random

from typer.testing import CliRunner

from domainlm.cli import _register, app

_register()
TEMPLATE = "The SMILES is <SMILES> {smiles}. Value <Y>"


def invoke(*args):
    """`domainlm ARGS` in-process; the click Result (exit_code, output)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def write_csv(path, rows, header=("smiles", "y")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def toy_rows(n=12, seed=0):
    """(SMILES-like string, fraction of C in it): an easy regression label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s = "".join(rng.choice("CNO") for _ in range(rng.randint(3, 10)))
        rows.append((s, round(s.count("C") / len(s), 4)))
    return rows


def easy_rows(n=12):
    """Long carbon chains labelled 1, short nitrogen strings 0: an input tiny random models can tell apart
    (same-length strings of other characters barely move a random tiny BERT's readout)."""
    return [("CCCCCCCC", 1.0), ("N", 0.0), ("CCCCCCC", 1.0), ("NN", 0.0)] * (n // 4)


def with_splits(rows, n_val=2, n_test=2):
    """Rows with a split column appended: the last `n_test` rows test, the `n_val` before them val."""
    parts = ["train"] * (len(rows) - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    return [(*row, part) for row, part in zip(rows, parts)]


def train_user_task(model, data, out, *extra, epochs=3, template=TEMPLATE, label_column="y"):
    """`domainlm train` on a user CSV with small-data settings."""
    args = ["--model", model, "--data", data, "--template", template, "--label-column", label_column]
    args += ["--epochs", epochs, "--lr", 1e-2, "--batch-size", 4, "--grad-accum", 1, "--out", out]
    return invoke("train", *args, *extra)
