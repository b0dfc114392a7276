"""Files users share (run directories, adapters, DeepDTA data sets) never run code when loaded: a planted
pickle payload is refused with an error naming the file, and the payload's side effect never happens."""

import os
import pickle

import numpy as np
import pytest
import torch

from cli_helpers import toy_rows, train_user_task, with_splits, write_csv
from domainlm.errors import InputError
from domainlm.qa.students.student import load_adapter
from domainlm.tasks.dta import _read_matrix
from domainlm.training import CHECKPOINT
from student_helpers import save_tiny, write_qa_dir
from test_students_cli import TRAIN, run_cli


class Payload:
    """Unpickled by an ordinary unpickler, this creates `marker`: proof that the file ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker, how: str) -> None:
    """Write a payload where a checkpoint is expected: in torch's zip format, or as a bare pickle."""
    state = {"settings": Payload(marker), "trainable": {}}
    if how == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))


def interrupt_first_step(monkeypatch):
    def killed(self, *a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch.optim.AdamW, "step", killed)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_resume_refuses_a_planted_tag_run_checkpoint(model_dir, tmp_path, monkeypatch, how):
    data = write_csv(tmp_path / "toy.csv", with_splits(toy_rows(12)), ("smiles", "y", "split"))
    run, marker = tmp_path / "run", tmp_path / "payload-ran"
    extra = ["--split-column", "split", "--char-level", "SMILES"]
    with monkeypatch.context() as m:
        interrupt_first_step(m)
        assert train_user_task(model_dir("llama"), data, run, *extra, epochs=1).exit_code != 0
    plant(run / CHECKPOINT, marker, how)
    res = train_user_task(model_dir("llama"), data, run, *extra, "--resume", epochs=1)
    message = " ".join(res.output.split())
    assert res.exit_code != 0 and f"cannot read the checkpoint {run / CHECKPOINT}" in message, res.output
    assert "refused, as unpickling them could run code" in message and "weights_only=False" not in message
    assert not marker.exists()


def test_resume_refuses_a_planted_student_checkpoint(tmp_path, monkeypatch):
    model = save_tiny(tmp_path / "llama", "llama")
    data, run, marker = write_qa_dir(tmp_path / "qa"), tmp_path / "run", tmp_path / "payload-ran"
    with monkeypatch.context() as m:
        interrupt_first_step(m)
        code, out = run_cli("finetune", "--model", model, "--data", data, "--out", run, *TRAIN)
        assert code != 0 and (run / "config.yaml").is_file(), out
    plant(run / CHECKPOINT, marker, "torch.save")
    code, out = run_cli("finetune", "--out", run, "--resume")
    assert code != 0 and f"cannot read the checkpoint {run / CHECKPOINT}" in out, out
    assert not marker.exists()


def test_an_adapter_file_holding_a_payload_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    from tiny_models import tiny_model

    model, _ = tiny_model("llama")
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    adapter, marker = tmp_path / "adapter", tmp_path / "payload-ran"
    wrapped.save_pretrained(adapter)
    (adapter / "adapter_model.safetensors").unlink()  # peft falls back to adapter_model.bin, a pickle
    torch.save({"x": Payload(marker)}, adapter / "adapter_model.bin")
    with pytest.raises(InputError, match=r"adapter: .*holds objects other than tensors"):
        load_adapter(wrapped, adapter)
    assert not marker.exists()


def test_a_model_weights_file_holding_a_payload_is_refused(model_dir, tmp_path):
    """A model directory with a pickled `pytorch_model.bin`: transformers reads it weights-only."""
    import shutil

    from domainlm import backbone

    folder, marker = tmp_path / "model", tmp_path / "payload-ran"
    shutil.copytree(model_dir("llama"), folder)
    (folder / "model.safetensors").unlink()
    torch.save({"x": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"cannot load model .*holds objects other than tensors"):
        backbone.load(str(folder), "generation")
    assert not marker.exists()


# ---- DeepDTA `Y` ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda p: p,  # the payload as the whole file
        lambda p: [[1.0, 2.0], [p, 3.0]],  # inside a plain list
        lambda p: np.array([[1.0, p]], dtype=object),  # inside an object array (numpy names it a class)
    ],
    ids=["whole", "in-list", "in-object-array"],
)
def test_a_y_file_holding_a_payload_is_refused_by_name(tmp_path, wrap):
    marker, path = tmp_path / "payload-ran", tmp_path / "Y"
    path.write_bytes(pickle.dumps(wrap(Payload(marker)), protocol=2))
    with pytest.raises(InputError, match=r"/Y: cannot read a pickled numeric matrix .*system is not part"):
        _read_matrix(path, 1, 2)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_y_files_of_every_pickle_protocol_load(tmp_path, protocol):
    Y = np.array([[1.5, np.nan, 3.0], [4.0, 5.0, 6.25]])
    (tmp_path / "Y").write_bytes(pickle.dumps(Y, protocol=protocol))
    np.testing.assert_array_equal(_read_matrix(tmp_path / "Y", 2, 3), Y)
    (tmp_path / "Y").write_bytes(pickle.dumps(Y.tolist(), protocol=protocol))  # plain lists of floats
    np.testing.assert_array_equal(_read_matrix(tmp_path / "Y", 2, 3), Y)


def test_davis_y_loads_bit_identically_to_an_unrestricted_unpickler(data_dir):
    path = data_dir / "dta" / "davis" / "Y"
    with open(path, "rb") as f:
        expected = pickle.load(f, encoding="latin1")  # trusted here: the repository's own data set
    matrix = _read_matrix(path, *expected.shape)
    assert matrix.dtype == expected.dtype and matrix.shape == expected.shape == (68, 442)
    assert matrix.tobytes() == expected.tobytes()
