"""User tasks from CSV / JSONL: splits, classes, and every bad input named by file and editor line."""

import json

import pytest

from domainlm.errors import InputError
from domainlm.tasks.table import load_table_task

TEMPLATE = "The SMILES is <SMILES> {smiles}. Value <Y>"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def csv_rows(n=20):
    return "smiles,y,kind\n" + "".join(f"{'C' * (i + 1)}O,{i / 10},{'ab'[i % 2]}\n" for i in range(n))


def test_csv_regression_split_is_seeded_and_complete(tmp_path):
    path = write(tmp_path, "t.csv", csv_rows(20))
    a = load_table_task(path, TEMPLATE, "y")
    b = load_table_task(path, TEMPLATE, "y")
    assert (len(a.train), len(a.val), len(a.test)) == (16, 2, 2)
    assert [e.id for e in a.train] == [e.id for e in b.train]
    assert [e.id for e in load_table_task(path, TEMPLATE, "y", seed=1).train] != [e.id for e in a.train]
    everything = {e.id: e for e in a.train + a.val + a.test}
    assert len(everything) == 20
    assert everything["line 2"].fields == {"smiles": "CO"} and everything["line 2"].label == 0.0
    assert everything["line 21"].label == pytest.approx(1.9)


def test_split_column_and_id_column(tmp_path):
    text = "id,smiles,y,part\na,CCO,1,train\nb,CCN,2,VALID\nc,CCC,3,test\nd,CCCl,4,train\n"
    data = load_table_task(write(tmp_path, "s.csv", text), TEMPLATE, "y", id_column="id", split_column="part")
    assert [e.id for e in data.train] == ["a", "d"]
    assert [e.id for e in data.val] == ["b"] and [e.id for e in data.test] == ["c"]
    bad = write(tmp_path, "s2.csv", text.replace("VALID", "holdout"))
    with pytest.raises(InputError, match=r"s2\.csv, line 3: part='holdout'"):
        load_table_task(bad, TEMPLATE, "y", split_column="part")


def test_classification_maps_sorted_string_classes(tmp_path):
    data = load_table_task(write(tmp_path, "c.csv", csv_rows(10)), TEMPLATE, "kind", head="classification")
    assert data.info["classes"] == ["a", "b"]
    by_id = {e.id: e.label for e in data.train + data.val + data.test}
    assert by_id["line 2"] == 0 and by_id["line 3"] == 1


def test_unknown_class_names_the_line(tmp_path):
    path = write(tmp_path, "c.csv", "smiles,y\nCCO,yes\nCCN,no\nCCC,perhaps\n")
    with pytest.raises(InputError, match=r"c\.csv, line 4: label 'perhaps' is not one of the classes"):
        load_table_task(path, TEMPLATE, "y", head="classification", classes=["no", "yes"])
    ints = write(tmp_path, "i.csv", "smiles,y\nCCO,0\nCCN,1\nCCC,3\n")
    with pytest.raises(InputError, match=r"i\.csv, line 4: label '3'"):
        load_table_task(ints, TEMPLATE, "y", head="classification", n_classes=3)
    skipped = load_table_task(ints, TEMPLATE, "y", head="classification", n_classes=3, skip_invalid=True)
    assert skipped.skipped == {"unknown_class": 1} and skipped.info["classes"] == ["0", "1", "2"]


def test_jsonl_with_line_numbers(tmp_path):
    lines = [json.dumps({"smiles": "C" * (i + 1), "y": i}) for i in range(8)]
    lines.insert(3, "")  # a blank line is skipped but still counted by the editor
    lines.append(json.dumps({"smiles": "CCO", "y": "high"}))
    path = write(tmp_path, "t.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"t\.jsonl, line 10: label 'high' is not a number"):
        load_table_task(path, TEMPLATE, "y")
    assert load_table_task(path, TEMPLATE, "y", skip_invalid=True).skipped == {"non_numeric_label": 1}
    broken = write(tmp_path, "b.jsonl", '{"smiles": "CCO", "y": 1}\n{"smiles": "CC\n')
    with pytest.raises(InputError, match=r"b\.jsonl, line 2: not valid JSON"):
        load_table_task(broken, TEMPLATE, "y")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"e\.csv: the file is empty"),
        ("smiles,y\n", r"e\.csv: the file holds no data rows"),
        ("smiles,y\nCCO,1\nCCN,2,7\n", r"e\.csv, line 3: 3 fields where the header has 2"),
        ("smiles,y\nCCO,1\nCCN\n", r"e\.csv, line 3: 1 fields where the header has 2"),
        ('smiles,y\n"C\nC",1\nCCN,nan\n', r"e\.csv, line 4: label 'nan' is not a finite number"),
        ("smiles,y\nCCO,1\nCCN,\n", r"e\.csv, line 3: the label is empty"),
        ("smiles,y\nCCO,one\n", r"e\.csv, line 2: label 'one' is not a number"),
        (
            "smiles,value\nCCO,1\n",
            r"e\.csv: column\(s\) \['y'\] not found; the file has columns \['smiles', 'value'\]",
        ),
        (
            "mol,y\nCCO,1\n",
            r"e\.csv: template field\(s\) \['smiles'\] not among the data columns \['mol', 'y'\]",
        ),
        ("smiles,y\nC1CC(,1\n", r"e\.csv, line 2: .*RDKit cannot parse the SMILES"),
        ("smiles,y\n ,1\n", r"e\.csv, line 2: empty or missing value for template field 'smiles'"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        load_table_task(write(tmp_path, "e.csv", text), TEMPLATE, "y")


def test_skip_invalid_counts_each_reason(tmp_path):
    text = "smiles,y\n" + "".join(f"{'C' * (i + 1)},{i}\n" for i in range(10)) + "CCO,nan\nC1CC(,2\nCCN,x\n"
    data = load_table_task(write(tmp_path, "k.csv", text), TEMPLATE, "y", skip_invalid=True)
    assert data.skipped == {"non_finite_label": 1, "invalid_smiles": 1, "non_numeric_label": 1}
    assert len(data.train + data.val + data.test) == 10


def test_protein_spans_are_checked(tmp_path):
    template = "The protein is <Protein> {seq}. Value <Y>"
    ok = load_table_task(write(tmp_path, "p.csv", "seq,y\nMKVL,1\nMKXL,2\n"), template, "y")
    assert len(ok.train + ok.val + ok.test) == 2  # X (unknown residue) is a valid letter
    with pytest.raises(InputError, match=r"q\.csv, line 3: .*non-standard residue"):
        load_table_task(write(tmp_path, "q.csv", "seq,y\nMKVL,1\nMK1L,2\n"), template, "y")


def test_bad_arguments(tmp_path):
    path = write(tmp_path, "t.csv", csv_rows(5))
    with pytest.raises(InputError, match="split fractions"):
        load_table_task(path, TEMPLATE, "y", split=(0.5, 0.1, 0.1))
    with pytest.raises(InputError, match="unsupported file type"):
        load_table_task(write(tmp_path, "t.xlsx", "x"), TEMPLATE, "y")
    with pytest.raises(InputError, match="file not found"):
        load_table_task(tmp_path / "missing.csv", TEMPLATE, "y")
