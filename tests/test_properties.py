"""The qed / descriptor presets: the exact split recipe, labels, filters, bad input and the label cache."""

import json
import random

import pytest

from domainlm.errors import InputError
from domainlm.tasks import get_task
from domainlm.tasks import properties as props

LIGANDS = {
    "L1": "CCO",
    "L2": "CC(=O)Oc1ccccc1C(=O)O",  # aspirin
    "L3": "CCO",  # duplicate SMILES: keeps the first id, L1
    "L4": "Cl.CCN",  # a salt, as in DTC
    **{f"M{i}": "C" * (i + 2) + "O" for i in range(16)},
}
PROTEINS = {
    "P1": "ACDEFGHIKLMNPQRSTVWY",
    "P2": "KLKLLLLLKLK",
    "P3": "M" * 30,
    **{f"Q{i}": "GA" * (i + 3) for i in range(10)},
}


def write_corpora(root, ligands=None, proteins=None):
    (root / "corpora").mkdir(parents=True, exist_ok=True)
    (root / "corpora" / "dtc_ligands.json").write_text(json.dumps(ligands or LIGANDS))
    (root / "corpora" / "dtc_proteins.json").write_text(json.dumps(proteins or PROTEINS))
    return root


@pytest.fixture()
def data(tmp_path):
    return write_corpora(tmp_path / "data")


@pytest.fixture()
def cache(tmp_path):
    return str(tmp_path / "cache")


def test_split_is_sorted_unique_shuffled_by_random_0_then_80_10_10():
    values = [f"S{i:03d}" for i in range(97)] * 2  # duplicates count once
    expected = sorted(set(values))
    random.Random(0).shuffle(expected)
    splits = props.split_unique(values)
    assert splits["train"] == expected[:77]  # int(0.8 * 97)
    assert splits["val"] == expected[77:86]  # int(0.1 * 97)
    assert splits["test"] == expected[86:]
    assert props.split_unique(list(reversed(values))) == splits  # input order does not matter


def test_real_qed_split_sizes_and_determinism(data_dir, cache):
    task = get_task("qed")
    a = task.load(data_dir, limit_train=5, limit_eval=3, cache_dir=cache)
    b = task.load(data_dir, limit_train=5, limit_eval=3, cache_dir=cache)
    assert a.info["n_unique"] == 11899
    assert a.info["unique_split_sizes"] == {"train": 9519, "val": 1189, "test": 1191}
    assert [e.id for e in a.train] == [e.id for e in b.train] and len(a.train) == 5 and len(a.test) == 3
    table = json.loads((data_dir / "corpora" / "dtc_ligands.json").read_text())
    expected = sorted(set(table.values()))
    random.Random(0).shuffle(expected)
    assert [e.fields["smiles"] for e in a.train] == expected[:5]
    assert all(table[e.id] == e.fields["smiles"] for e in a.train + a.val + a.test)


def test_qed_labels_match_rdkit_reference_values():
    assert props.qed_label("CCO") == pytest.approx(0.4068, abs=1e-4)  # ethanol
    assert props.qed_label("CC(=O)Oc1ccccc1C(=O)O") == pytest.approx(0.5501, abs=1e-4)  # aspirin


def test_blosum1_is_the_average_over_residues():
    assert props.blosum1_label("KLKLLLLLKLK") == pytest.approx(
        -0.4827, abs=1e-4
    )  # peptides' documented value
    parts = [props.blosum1_label(c) for c in "ACD"]
    assert props.blosum1_label("ACD") == pytest.approx(sum(parts) / 3)


def test_qed_preset_rows(data, cache):
    task = get_task("qed")
    assert task.char_level_tags == ("SMILES",) and task.head == "regression"
    assert task.metrics == ("mse", "mae", "pearson", "spearman")
    loaded = task.load(data, cache_dir=cache)
    examples = loaded.train + loaded.val + loaded.test
    assert len(examples) == len(set(LIGANDS.values())) == 18
    by_smiles = {e.fields["smiles"]: e for e in examples}
    assert by_smiles["CCO"].id == "L1"
    assert by_smiles["Cl.CCN"].label == pytest.approx(props.qed_label("Cl.CCN"))
    assert by_smiles["CCO"].label == pytest.approx(0.4068, abs=1e-4)
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (14, 1, 3)


def test_limits_take_the_first_rows_of_the_fixed_split(data, cache):
    full = get_task("qed").load(data, cache_dir=cache)
    small = get_task("qed").load(data, limit_train=4, limit_eval=1, cache_dir=cache)
    assert [e.id for e in small.train] == [e.id for e in full.train[:4]]
    assert [e.id for e in small.test] == [e.id for e in full.test[:1]]


def test_invalid_smiles_names_file_and_id_or_is_a_counted_skip(tmp_path, cache):
    root = write_corpora(tmp_path / "bad", ligands={**LIGANDS, "BAD1": "C1CC(", "BAD2": "not a smiles"})
    with pytest.raises(InputError, match=r"dtc_ligands\.json, BAD\d.*--skip-invalid"):
        get_task("qed").load(root, cache_dir=cache)
    loaded = get_task("qed").load(root, skip_invalid=True, cache_dir=cache)
    assert loaded.skipped == {"invalid": 2}
    assert not {"BAD1", "BAD2"} & {e.id for e in loaded.train + loaded.val + loaded.test}


@pytest.mark.parametrize(
    ("sequence", "message"), [("", "empty protein"), ("ACDXB", "outside the 20 standard")]
)
def test_bad_protein_names_file_and_id(tmp_path, cache, sequence, message):
    root = write_corpora(tmp_path / "bad", proteins={**PROTEINS, "BADP": sequence})
    with pytest.raises(InputError, match=rf"dtc_proteins\.json, BADP: .*{message}"):
        get_task("descriptor").load(root, cache_dir=cache)
    assert get_task("descriptor").load(root, skip_invalid=True, cache_dir=cache).skipped == {"invalid": 1}


def test_descriptor_drops_long_sequences_counted(tmp_path, cache, caplog):
    root = write_corpora(tmp_path / "long", proteins={**PROTEINS, "LONG": "A" * 513, "EDGE": "C" * 512})
    task = get_task("descriptor")
    assert task.template.endswith("<Descriptor>") and task.char_level_tags == ("Protein",)
    loaded = task.load(root, cache_dir=cache)
    ids = {e.id for e in loaded.train + loaded.val + loaded.test}
    assert loaded.skipped == {"too_long": 1} and "LONG" not in ids and "EDGE" in ids
    assert "too_long" in caplog.text
    everything = task.load(root, max_chars=None, cache_dir=cache)
    assert "LONG" in {e.id for e in everything.train + everything.val + everything.test}
    assert not everything.skipped
    p2 = next(e for e in everything.train + everything.val + everything.test if e.id == "P2")
    assert p2.label == pytest.approx(-0.4827, abs=1e-4) and p2.fields == {"protein": "KLKLLLLLKLK"}


def test_labels_are_cached_by_file_hash(data, cache, monkeypatch):
    get_task("qed").load(data, cache_dir=cache)
    files = list((props.cache.cache_dir(cache) / "labels").glob("qed-*.json"))
    assert len(files) == 1

    def fail(mol):
        raise AssertionError("label recomputed although cached")

    monkeypatch.setattr("rdkit.Chem.QED.qed", fail)
    again = get_task("qed").load(data, cache_dir=cache)
    assert len(again.train) == 14

    files[0].write_text("{ truncated")  # a corrupt entry is recomputed, never trusted
    monkeypatch.undo()
    assert len(get_task("qed").load(data, cache_dir=cache).train) == 14
    write_corpora(data, ligands={**LIGANDS, "NEW": "CCCCCCN"})  # a changed file gets its own entry
    get_task("qed").load(data, cache_dir=cache)
    assert len(list((props.cache.cache_dir(cache) / "labels").glob("qed-*.json"))) == 2


def test_missing_data_directory_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DOMAINLM_DATA", raising=False)
    with pytest.raises(InputError, match="DOMAINLM_DATA"):
        get_task("qed").load(None)
    with pytest.raises(InputError, match="dtc_ligands.json: file not found"):
        get_task("qed").load(tmp_path)
