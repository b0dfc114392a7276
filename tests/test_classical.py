import numpy as np
import pytest

from domainlm.baselines import classical
from domainlm.baselines.classical import featurize_task, fit_predict, make_regressor, run_baseline
from domainlm.errors import DomainLMError, InputError
from domainlm.features import kmer_composition, morgan_fingerprints, one_hot, protein_composition
from domainlm.metrics import mse
from domainlm.tasks import get_task
from domainlm.tasks.base import Example, TaskData, TaskSpec

SMILES = ["CCO", "CCN", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCCCCC", "Cl.CN"]
PROTEINS = ["MKVLAA", "ACDEFGHIK", "WYWYGG", "MKKLLX"]
QUICK = {"random_forest": {"n_estimators": 50}, "gradient_boosting": {"n_estimators": 200}}


def learnable_problem(seed=0, n=400, d=10):
    """Binary features; y depends on a few of them, with an interaction, plus a little noise."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 2, size=(n, d)).astype(np.float32)
    y = 2 * X[:, 0] - 1.5 * X[:, 1] + X[:, 2] * X[:, 3] + 0.1 * rng.normal(size=n)
    return X[:300], y[:300], X[300:], y[300:]


@pytest.mark.parametrize("name", ["nearest_neighbour", "random_forest", "gradient_boosting"])
def test_methods_beat_the_mean_on_a_learnable_problem(name):
    X_train, y_train, X_test, y_test = learnable_problem()
    (baseline,) = fit_predict("mean", X_train, y_train, [X_test])
    (pred,) = fit_predict(name, X_train, y_train, [X_test], seed=0, **QUICK.get(name, {}))
    assert mse(y_test, pred) < 0.5 * mse(y_test, baseline)
    assert make_regressor(name).trainable_params is None


def test_mean_predicts_the_training_mean():
    (pred,) = fit_predict("mean", np.zeros((3, 2)), [1.0, 2.0, 6.0], [np.zeros((2, 2))])
    assert pred.tolist() == [3.0, 3.0]


def test_gradient_boosting_stops_early_on_validation():
    X_train, y_train, X_test, y_test = learnable_problem(n=500)
    model = make_regressor("gradient_boosting", n_estimators=2000, early_stopping_rounds=20)
    model.fit(X_train, y_train, X_test, y_test)
    assert 0 < model.booster_.best_iteration < 2000


def test_nearest_neighbour_similarities_and_ties():
    X_train = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=float)
    model = make_regressor("nearest_neighbour", metric="tanimoto").fit(X_train, [1.0, 2.0, 4.0])
    # [1,1,1,0] has Tanimoto 2/3 with the first row, 1/4 with the others; [0,0,1,1] ties two rows
    assert model.predict(np.array([[1, 1, 1, 0], [0, 0, 1, 1]], dtype=float)).tolist() == [1.0, 3.0]
    blocks = [(slice(0, 2), "tanimoto"), (slice(2, 4), "cosine")]
    model = make_regressor("nearest_neighbour", metric=blocks).fit(X_train, [1.0, 2.0, 4.0])
    assert model.predict(np.array([[1, 0, 0, 0]], dtype=float)).tolist() == [1.0]
    with pytest.raises(DomainLMError, match="unknown similarity"):
        make_regressor("nearest_neighbour", metric="manhattan")


def test_registry_refuses_unknown_and_duplicate_names():
    with pytest.raises(DomainLMError, match="unknown classical method"):
        make_regressor("svm")
    with pytest.raises(DomainLMError, match="already registered"):
        classical.register_method("mean")(type("Other", (classical.ClassicalRegressor,), {}))


def test_morgan_fingerprints():
    fp = morgan_fingerprints(SMILES)
    assert fp.shape == (len(SMILES), 2048) and fp.dtype == np.uint8
    assert (fp.sum(axis=1) > 0).all() and not (fp[0] == fp[1]).all()
    assert morgan_fingerprints(["CCO"], radius=1, n_bits=64).shape == (1, 64)
    with pytest.raises(InputError, match=r"mol-7: RDKit cannot parse the SMILES 'C1CC\(\('"):
        morgan_fingerprints(["CCO", "C1CC(("], items=["mol-1", "mol-7"])
    with pytest.raises(InputError, match="row 0: empty SMILES"):
        morgan_fingerprints([""])


def test_protein_composition():
    assert kmer_composition("ACCA")[[0, 1]].tolist() == [0.5, 0.5]  # A and C
    dipeptides = kmer_composition("ACCA", k=2)  # windows AC, CC, CA
    assert dipeptides.shape == (400,) and dipeptides.sum() == pytest.approx(1.0)
    assert dipeptides[0 * 20 + 1] == pytest.approx(1 / 3)  # AC
    # X counts as a residue but in no column; lower case is accepted
    assert kmer_composition("axaa").sum() == pytest.approx(0.75)
    assert protein_composition(PROTEINS).shape == (4, 420)
    with pytest.raises(
        InputError, match=r"P9: protein sequence holds non-standard residue\(s\) '\*1' .*position 3"
    ):
        protein_composition(["MKV", "MK1*"], items=["P1", "P9"])
    with pytest.raises(InputError, match="empty protein sequence"):
        kmer_composition("")


def test_one_hot():
    assert one_hot(["b", "a"], ["a", "b", "c"]).tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(InputError, match="line 4: unknown cell line 'Z'"):
        one_hot(["a", "Z"], ["a", "b"], what="cell line", items=["line 3", "line 4"])


def split(examples):
    return TaskData(train=examples[:-2], val=examples[-2:-1], test=examples[-1:])


def test_featurize_molecules_and_proteins():
    qed = split([Example(f"m{i}", {"smiles": s}, float(i)) for i, s in enumerate(SMILES)])
    features = featurize_task(qed, get_task("qed"))
    n = features.info["n_features"]
    assert features.X["train"].shape == (4, n) and features.X["test"].shape == (1, n)
    assert 0 < n < 2048  # columns constant over the four training molecules are dropped
    assert featurize_task(qed, get_task("qed"), drop_constant=False).X["val"].shape == (1, 2048)
    assert features.y["train"].tolist() == [0.0, 1.0, 2.0, 3.0]
    descriptor = split([Example(f"p{i}", {"protein": s}, 1.0) for i, s in enumerate(PROTEINS)])
    assert featurize_task(descriptor, get_task("descriptor"), drop_constant=False).X["train"].shape == (2, 20)
    with pytest.raises(DomainLMError, match="translation has no classical features"):
        featurize_task(qed, TaskSpec("translation", "{text} <Out>"))


def test_featurize_dta_concatenates_drug_and_protein():
    examples = [
        Example(
            f"{i}", {"smiles": SMILES[i % 6], "protein": PROTEINS[i % 4]}, float(i), group=PROTEINS[i % 4]
        )
        for i in range(10)
    ]
    features = featurize_task(split(examples), get_task("dta"), drop_constant=False)
    assert features.X["train"].shape == (8, 2048 + 420)
    assert features.blocks == {"morgan": slice(0, 2048), "protein_composition": slice(2048, 2468)}
    metric = features.method_params("nearest_neighbour")["metric"]
    assert metric == [(slice(0, 2048), "tanimoto"), (slice(2048, 2468), "cosine")]


def synergy_example(i, a, b, cell):
    return Example(
        f"r{i}", {"smiles_a": a, "smiles_b": b, "drug_a": a, "drug_b": b, "cell_line": cell}, float(i)
    )


def test_featurize_synergy_is_order_free_and_checks_cell_lines():
    rows = [synergy_example(i, SMILES[i % 3], SMILES[3 + i % 3], "XY"[i % 2]) for i in range(6)]
    rows += [synergy_example(6, SMILES[3], SMILES[0], "X"), synergy_example(7, SMILES[0], SMILES[3], "X")]
    train = rows[:6] + [synergy_example(5, SMILES[5], SMILES[2], "Y")]  # row 5 swapped, same label
    features = featurize_task(TaskData(train=train, val=rows[6:7], test=rows[7:]), get_task("synergy"))
    assert np.array_equal(features.X["val"], features.X["test"])  # same pair, other order
    assert features.info["train_duplicates_dropped"] == 1 and features.y["train"].tolist() == list(range(6))
    assert features.blocks["cell_line"].stop - features.blocks["cell_line"].start == 2
    unseen = TaskData(train=rows[:6], val=[], test=[synergy_example(9, SMILES[0], SMILES[3], "Q")])
    with pytest.raises(InputError, match="r9: unknown cell line 'Q'"):
        featurize_task(unseen, get_task("synergy"))


def test_run_baseline_row():
    X_train, y_train, X_test, y_test = learnable_problem()
    features = classical.TaskFeatures(
        X={"train": X_train, "val": X_test[:50], "test": X_test[50:]},
        y={"train": y_train, "val": y_test[:50], "test": y_test[50:]},
        blocks={"x": slice(0, 10)},
        block_metrics={"x": "tanimoto"},
        kind="synthetic",
    )
    row, predictions = run_baseline("random_forest", features, ["mse", "ci"], seed=3, n_estimators=20)
    assert row["method"] == "random_forest" and row["seed"] == 3 and row["trainable_params"] is None
    assert set(row) >= {"val_mse", "val_ci", "test_mse", "test_ci", "seconds"}
    assert row["test_mse"] == pytest.approx(mse(y_test[50:], predictions["test"]))
    row_nn, _ = run_baseline("nearest_neighbour", features, ["mse"])
    assert row_nn["test_mse"] < row_nn["test_mse"] + 1  # runs with the features' block metric


def test_refit_fits_again_on_train_and_val_with_what_validation_selected():
    X_train, y_train, X_test, y_test = learnable_problem(n=500)
    features = classical.TaskFeatures(
        X={"train": X_train, "val": X_test[:100], "test": X_test[100:]},
        y={"train": y_train, "val": y_test[:100], "test": y_test[100:]},
        blocks={"x": slice(0, 10)},
        block_metrics={"x": "tanimoto"},
        kind="synthetic",
    )
    train_only, train_val = np.mean(y_train), np.mean(np.concatenate([y_train, y_test[:100]]))
    row, pred = run_baseline("mean", features, ["mse"])
    assert (row["refit"], row["n_fit"]) == (False, 300)
    assert pred["test"][0] == pytest.approx(train_only) and pred["val"][0] == pytest.approx(train_only)
    row, pred = run_baseline("mean", features, ["mse"], refit=True)
    assert (row["refit"], row["n_fit"]) == (True, 400)
    assert pred["test"][0] == pytest.approx(train_val)  # the refit model saw val ...
    assert pred["val"][0] == pytest.approx(train_only)  # ... so val is scored by the one that did not
    assert row["val_mse"] == pytest.approx(mse(y_test[:100], np.full(100, train_only)))

    val = features.X["val"], features.y["val"]
    booster = make_regressor("gradient_boosting", n_estimators=1000, learning_rate=0.3).fit(
        X_train, y_train, *val
    )
    assert 0 < booster.booster_.best_iteration < 1000  # stopped early: the rounds validation selected
    assert booster.refit_params() == {"n_estimators": booster.booster_.best_iteration}
    assert make_regressor("gradient_boosting", n_estimators=5).fit(X_train, y_train).refit_params() == {}
    no_val = classical.TaskFeatures(
        {**features.X, "val": X_test[:0]}, {**features.y, "val": y_test[:0]}, features.blocks, {}, "synthetic"
    )
    assert run_baseline("mean", no_val, ["mse"], refit=True)[0]["refit"] is False  # nothing to refit on
