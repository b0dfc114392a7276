import csv

import pytest

from domainlm.engine.template import Template
from domainlm.errors import InputError
from domainlm.tasks import get_task

ONEIL_ROWS = 23052
ONEIL_FOLD_SIZES = [4554, 4614, 4599, 4599, 4686]


@pytest.fixture(scope="module")
def fold0(data_dir):
    return get_task("synergy").load(data_dir)


def test_oneil_fold_protocol(fold0):
    assert len(fold0.test) == ONEIL_FOLD_SIZES[0]
    assert len(fold0.val) == ONEIL_FOLD_SIZES[1]  # validation fold (k + 1) % 5
    n_train_rows = ONEIL_ROWS - ONEIL_FOLD_SIZES[0] - ONEIL_FOLD_SIZES[1]
    assert len(fold0.train) == 2 * n_train_rows  # each training pair in both drug orders
    assert len(fold0.info["cell_lines"]) == 39 and not fold0.skipped
    # each drug pair lives in one fold, so no pair crosses splits
    pairs = [{e.group for e in split} for split in (fold0.train, fold0.val, fold0.test)]
    assert not (pairs[0] & pairs[1] or pairs[0] & pairs[2] or pairs[1] & pairs[2])


def test_swapped_training_pairs_mirror_the_originals(fold0):
    by_id = {e.id: e for e in fold0.train}
    swapped = [e for e in fold0.train if e.id.endswith("|swapped")]
    assert len(swapped) == len(fold0.train) // 2
    for e in swapped[:200]:
        original = by_id[e.id.removesuffix("|swapped")]
        f, g = e.fields, original.fields
        assert (f["drug_a"], f["drug_b"], f["smiles_a"], f["smiles_b"]) == (
            g["drug_b"],
            g["drug_a"],
            g["smiles_b"],
            g["smiles_a"],
        )
        assert f["cell_line"] == g["cell_line"] and e.label == original.label
    assert not any(e.id.endswith("|swapped") for e in fold0.val + fold0.test)


def test_other_folds_and_options(data_dir):
    task = get_task("synergy")
    last = task.load(data_dir, fold=4, swap_train=False)
    assert (len(last.test), len(last.val)) == (ONEIL_FOLD_SIZES[4], ONEIL_FOLD_SIZES[0])
    assert len(last.train) == ONEIL_ROWS - ONEIL_FOLD_SIZES[4] - ONEIL_FOLD_SIZES[0]
    small = task.load(data_dir, limit_train=50, limit_eval=10)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 10, 10)  # 50 pairs, both orders
    assert len({e.group for e in small.train}) > 10
    with pytest.raises(InputError, match="fold must be in 0..4"):
        task.load(data_dir, fold=5)


def test_template_renders_two_smiles_spans(fold0):
    example = fold0.test[0]
    parts = Template(get_task("synergy").template).render(example.fields)
    spans = [(p.domain, p.value) for p in parts if p.kind == "data" and p.domain]
    assert spans == [("SMILES", example.fields["smiles_a"]), ("SMILES", example.fields["smiles_b"])]
    assert example.fields["cell_line"] in "".join(p.value for p in parts)


DRUGS = [("name", "smiles"), ("A", "CCO"), ("B", "c1ccccc1"), ("C", "CC(=O)O")]
LABELS = [
    ("", "drug_a_name", "drug_b_name", "cell_line", "synergy", "fold"),
    ("A_B_X", "A", "B", "X", "1.5", "0"),
    ("A_C_X", "A", "C", "X", "-2.0", "1"),
    ("B_C_Y", "B", "C", "Y", "3.0", "2"),
    ("A_B_Y", "A", "B", "Y", "0.5", "3"),
    ("A_C_Y", "A", "C", "Y", "7.0", "4"),
]


def write_dataset(root, drugs=DRUGS, labels=LABELS):
    root.mkdir(parents=True)
    for name, rows in (("oneil_drugs.csv", drugs), ("oneil_labels.csv", labels)):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def test_tiny_dataset_splits(tmp_path):
    data = get_task("synergy").load(write_dataset(tmp_path / "s"), fold=2)
    assert [e.id for e in data.test] == ["B_C_Y"]
    assert [e.id for e in data.val] == ["A_B_Y"]
    assert [e.id for e in data.train] == [
        "A_B_X",
        "A_B_X|swapped",
        "A_C_X",
        "A_C_X|swapped",
        "A_C_Y",
        "A_C_Y|swapped",
    ]


@pytest.mark.parametrize(
    ("drugs", "labels", "message"),
    [
        (DRUGS, [*LABELS, ("A_D_X", "A", "D", "X", "1.0", "0")], r"line 7 \(A_D_X\): unknown drug 'D'"),
        (
            DRUGS,
            [*LABELS, ("A_B_Z", "A", "B", "Z", "nan", "0")],
            r"line 7 \(A_B_Z\): synergy 'nan' is not a number",
        ),
        (DRUGS, [*LABELS, ("A_B_Z", "A", "B", "Z", "high", "0")], r"line 7 \(A_B_Z\): synergy 'high'"),
        (
            DRUGS,
            [*LABELS, ("A_B_Z", "A", "B", "Z", "1.0", "7")],
            r"line 7 \(A_B_Z\): fold '7' is not an integer",
        ),
        ([*DRUGS, ("D", "C1CC((")], LABELS, r"oneil_drugs.csv, line 5 \(D\): RDKit cannot parse"),
        ([*DRUGS, ("A", "CC")], LABELS, r"oneil_drugs.csv, line 5: drug 'A' is listed twice"),
        (DRUGS, [r[:5] for r in LABELS], r"missing column\(s\) \['fold'\]"),
        (DRUGS, [*LABELS, ("A_B_Z", "A", "B")], r"line 7: expected 6 fields"),
    ],
)
def test_bad_files_name_the_row(tmp_path, drugs, labels, message):
    with pytest.raises(InputError, match=message):
        get_task("synergy").load(write_dataset(tmp_path / "bad", drugs, labels))


def test_skip_invalid_counts_rows(tmp_path):
    labels = [*LABELS, ("A_D_X", "A", "D", "X", "1.0", "0"), ("A_B_Z", "A", "B", "Z", "", "0")]
    drugs = [*DRUGS[:3], ("C", "C1CC((")]
    data = get_task("synergy").load(write_dataset(tmp_path / "s", drugs, labels), skip_invalid=True)
    assert data.skipped == {"unknown_drug": 1, "invalid_label": 1, "invalid_smiles": 3}
    assert [e.id for e in data.test] == ["A_B_X"]
