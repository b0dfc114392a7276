"""A tag run's config.yaml is a versioned `RunConfig`: it reads back equal, eval / predict / --resume go by
it (never by metrics.json or fresh flags), and a version this domainlm does not read is refused."""

import json

import pytest
import yaml

from cli_helpers import TEMPLATE, invoke, toy_rows, train_user_task, write_csv
from domainlm import tageval, tagpredict
from domainlm.errors import DomainLMError
from domainlm.runs import RUN_CONFIG_VERSION, RunConfig


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    """A finished one-epoch run of a user task on the tiny llama: (model, data file, run directory)."""
    root = tmp_path_factory.mktemp("run-config")
    model = model_dir("llama")
    data = write_csv(root / "toy.csv", toy_rows())
    out = root / "run"
    res = train_user_task(model, data, out, "--char-level", "SMILES", "--train-domain-tags", epochs=1)
    assert res.exit_code == 0, res.output
    return model, data, out


def saved(out) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())


def edit(path, **changes):
    """Rewrite a run's config.yaml or metrics.json with some top-level values changed."""
    is_json = path.suffix == ".json"
    record = json.loads(path.read_text()) if is_json else yaml.safe_load(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record) if is_json else yaml.safe_dump(record, sort_keys=False))


def test_config_yaml_round_trips_and_says_what_the_run_is(run):
    model, data, out = run
    config = RunConfig.load(out)
    assert config.to_dict() == saved(out)
    assert RunConfig.from_dict(config.to_dict()) == config
    assert config.version == RUN_CONFIG_VERSION and config.stage == "function"
    assert config.model == str(model) and config.tags == [] and config.prefer == "error"
    task = config.task
    assert (task.data, task.template, task.label_column) == (str(data), TEMPLATE, "y")
    assert task.head == "regression"
    assert task.char_level == ("SMILES",) and task.preset is None
    assert config.train.epochs == 1 and config.train.train_domain_tags and config.train.isolate is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert config.isolate is metrics["isolate"] is True  # resolved: on for a regression head
    assert config.reuse == metrics["reuse"]


def test_eval_and_predict_use_the_saved_resolved_isolation(run, monkeypatch, tmp_path):
    _, data, out = run
    seen = []
    real_evaluate, real_predict = tageval.evaluate_split, tagpredict.predict

    def evaluate_split(*args, isolate, **kwargs):
        seen.append(("eval", isolate))
        return real_evaluate(*args, isolate=isolate, **kwargs)

    def predict(*args, isolate, **kwargs):
        seen.append(("predict", isolate))
        return real_predict(*args, isolate=isolate, **kwargs)

    monkeypatch.setattr(tageval, "evaluate_split", evaluate_split)
    monkeypatch.setattr(tagpredict, "predict", predict)
    original = (out / "config.yaml").read_text(), (out / "metrics.json").read_text()
    try:
        edit(out / "metrics.json", isolate=False)  # a result, not configuration: changes nothing
        before = tageval.evaluate_run(out)
        tagpredict.predict_file(data, tmp_path / "p.csv", run=out)
        assert seen == [("eval", True), ("predict", True)]
        edit(out / "config.yaml", isolate=False)
        after = tageval.evaluate_run(out)
        tagpredict.predict_file(data, tmp_path / "p.csv", run=out)
        assert seen[2:] == [("eval", False), ("predict", False)]
        assert after["mse"] != before["mse"]
    finally:
        (out / "config.yaml").write_text(original[0])
        (out / "metrics.json").write_text(original[1])


@pytest.mark.parametrize(
    "version, message",
    [(RUN_CONFIG_VERSION + 1, "newer than this domainlm reads"), (None, "an older domainlm wrote it")],
)
def test_a_config_version_this_domainlm_does_not_read_is_refused(run, tmp_path, version, message):
    _, _, out = run
    record = {k: v for k, v in saved(out).items() if k != "version"}
    with pytest.raises(DomainLMError, match=message):
        RunConfig.from_dict(record if version is None else {**record, "version": version})
    original = (out / "config.yaml").read_text()
    try:
        edit(out / "config.yaml", version=version)
        res = invoke("eval", "--run", out)
        assert res.exit_code == 2 and message in res.output
    finally:
        (out / "config.yaml").write_text(original)


def test_unknown_fields_are_refused(run):
    with pytest.raises(DomainLMError, match="not a run configuration"):
        RunConfig.from_dict({**saved(run[2]), "learning_rate": 1.0})


def test_resume_goes_by_the_saved_config_not_the_flags(run, tmp_path):
    model, data, _ = run
    out = tmp_path / "run"
    assert train_user_task(model, data, out, "--train-domain-tags", epochs=1).exit_code == 0
    first = saved(out)
    edit(out / "status.json", status="failed")  # as a killed run leaves it
    res = invoke("train", "--out", out, "--resume", "--lr", 0.5, "--model", "not-a-model")
    assert res.exit_code == 0, res.output
    assert saved(out) == first
