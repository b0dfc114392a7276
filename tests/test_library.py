"""Tag libraries: tampered tensor files are refused by name; merging two libraries that disagree on a tag
is an error unless the caller says which wins (on_conflict / `--prefer`)."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import invoke, toy_rows, train_user_task, write_csv
from domainlm.engine.library import TagLibrary
from domainlm.engine.model import TaggedModel
from domainlm.errors import DomainLMError
from tiny_models import tiny_model


def save_library(path, shift: float) -> torch.Tensor:
    """A one-tag library (<SMILES>, moved by `shift`) for the tiny llama; returns the saved vectors."""
    tm = TaggedModel(*tiny_model("llama"))
    tm.add_tag("SMILES", char_level=True)
    with torch.no_grad():
        tm.tag_vectors["SMILES"].add_(shift)
    tm.save_tags(path)
    return tm.tag_vectors["SMILES"].detach().clone()


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, tuple[str, torch.Tensor]]:
    """Two libraries for the same base model whose <SMILES> differ: name -> (directory, vectors)."""
    root = tmp_path_factory.mktemp("libraries")
    return {
        name: (str(root / name), save_library(root / name, shift)) for name, shift in (("a", 0.1), ("b", 0.2))
    }


def loaded_smiles(*directories, on_conflict="error") -> torch.Tensor:
    tm = TaggedModel(*tiny_model("llama"))
    tm.load_tags(*directories, on_conflict=on_conflict)
    return tm.tag_vectors["SMILES"].detach()


def test_a_tag_with_two_values_is_an_error_naming_both_libraries(libraries):
    (a, _), (b, _) = libraries["a"], libraries["b"]
    with pytest.raises(DomainLMError, match="different values") as error:
        loaded_smiles(a, b)
    assert a in str(error.value) and b in str(error.value)


@pytest.mark.parametrize(
    "on_conflict, winner",
    [("first", "a"), ("last", "b"), ({"SMILES": "b"}, "b"), ({"SMILES": "a"}, "a")],
)
def test_on_conflict_picks_the_winning_library(libraries, on_conflict, winner):
    if isinstance(on_conflict, dict):
        on_conflict = {tag: libraries[name][0] for tag, name in on_conflict.items()}
    got = loaded_smiles(libraries["a"][0], libraries["b"][0], on_conflict=on_conflict)
    torch.testing.assert_close(got, libraries[winner][1], rtol=0, atol=0)


def test_on_conflict_naming_neither_library_is_refused(libraries, tmp_path):
    with pytest.raises(DomainLMError, match="neither"):
        loaded_smiles(libraries["a"][0], libraries["b"][0], on_conflict={"SMILES": str(tmp_path)})


def test_identical_copies_merge_without_a_conflict(libraries, tmp_path):
    copy = shutil.copytree(libraries["a"][0], tmp_path / "copy")
    torch.testing.assert_close(loaded_smiles(libraries["a"][0], copy), libraries["a"][1], rtol=0, atol=0)


@pytest.mark.parametrize("tamper", ["swap", "flip"])
def test_tensors_that_do_not_match_the_checksum_are_refused_by_name(libraries, tmp_path, tamper):
    library = shutil.copytree(libraries["a"][0], tmp_path / "tampered")
    tensors = library / "tags.safetensors"
    if tamper == "swap":  # a valid file, but another library's
        shutil.copy(f"{libraries['b'][0]}/tags.safetensors", tensors)
    else:
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))
    with pytest.raises(DomainLMError, match=re.escape(f"{tensors} does not match the checksum")):
        TagLibrary.load(library)
    with pytest.raises(DomainLMError, match="checksum"):
        loaded_smiles(library)
    res = invoke("tags", library)
    assert res.exit_code == 2 and "tags.safetensors" in res.output and "checksum" in res.output


@pytest.mark.parametrize("prefer, winner", [(["--prefer", "SMILES={b}"], "b"), (["--prefer", "first"], "a")])
def test_train_with_prefer_starts_from_the_preferred_library(libraries, model_dir, tmp_path, prefer, winner):
    (a, _), (b, _) = libraries["a"], libraries["b"]
    data = write_csv(tmp_path / "toy.csv", toy_rows())
    prefer = [p.format(b=b) for p in prefer]
    res = train_user_task(
        model_dir("llama"), data, tmp_path / "run", "--tags", a, "--tags", b, *prefer, epochs=1
    )
    assert res.exit_code == 0, res.output
    saved = load_file(tmp_path / "run" / "tags" / "tags.safetensors")["tag.SMILES"]
    torch.testing.assert_close(saved, libraries[winner][1], rtol=0, atol=0)  # domain tags stay frozen


def test_train_without_prefer_refuses_the_clash(libraries, model_dir, tmp_path):
    data = write_csv(tmp_path / "toy.csv", toy_rows())
    tags = ["--tags", libraries["a"][0], "--tags", libraries["b"][0]]
    res = train_user_task(model_dir("llama"), data, tmp_path / "run", *tags, epochs=1)
    assert res.exit_code == 2 and "different values" in res.output and "--prefer" in res.output
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"
