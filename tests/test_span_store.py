"""The bounded span store: a byte budget evicts least recently used spans, yet predictions and gradients
stay those of the full isolated forward; 16-bit storage halves the bytes; `domainlm train` with a budget
groups batches by their longest span."""

import json

import pytest
import torch

from cli_helpers import train_user_task, write_csv
from domainlm.engine.reuse import SpanCache, longest_span_key, reused_forward
from tiny_models import PAIR_TEMPLATE, PAIRS, tagged_pair_model

TEXTS = [PAIR_TEMPLATE.format(p=p, s=s) for p, s in PAIRS]
LABELS = [5.0, 7.0, 6.0, 6.5]


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def test_a_full_store_evicts_the_least_recently_used_span():
    tm = tagged_pair_model()
    a, b, c = (f"<Protein> {p} <BA>" for p in ("MKVLAAGG", "WYYKKRAA", "GGAALVKM"))
    key = {text: longest_span_key(tm, text) for text in (a, b, c)}
    unbounded = SpanCache(tm)
    with torch.no_grad():
        reused_forward(tm, unbounded, [a, b, c])
    budget = unbounded.bytes - nbytes(unbounded.entry(key[a]))  # room for all but one protein
    cache = SpanCache(tm, budget_bytes=budget)
    with torch.no_grad():
        for text in (a, b, a, c):  # a is used again after b, so b is the least recently used when c comes
            reused_forward(tm, cache, [text])
    assert cache.entry(key[a]) is not None and cache.entry(key[c]) is not None and cache.entry(key[b]) is None
    assert cache.stats.evictions == 1 and cache.bytes <= budget


def grads(tm, loss) -> dict[str, torch.Tensor]:
    tm.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in tm.trainable_parameters().items()}


@pytest.mark.parametrize("budget", [6_000, 100])  # a few spans; less than any one span
def test_a_bounded_store_keeps_predictions_and_gradients_exact(budget):
    tm = tagged_pair_model()
    cache = SpanCache(tm, budget_bytes=budget)
    for batch in ([0, 1], [2, 3], [0, 3]):
        texts, labels = [TEXTS[i] for i in batch], [LABELS[i] for i in batch]
        full = tm(**tm.encode(texts, labels, isolate=True))
        expected = grads(tm, full.loss)
        reused = reused_forward(tm, cache, texts, labels)
        got = grads(tm, reused.loss)
        torch.testing.assert_close(reused.predictions, full.predictions, rtol=1e-5, atol=1e-5)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)
    assert cache.bytes <= budget
    assert cache.stats.evictions > 0 if budget > 100 else not cache.store


def test_bfloat16_store_holds_half_the_bytes_and_stays_close_to_float32():
    tm = tagged_pair_model()
    full, half = SpanCache(tm), SpanCache(tm, dtype=torch.bfloat16)
    with torch.no_grad():
        p32 = reused_forward(tm, full, TEXTS).predictions
        p16 = reused_forward(tm, half, TEXTS).predictions
    assert {t.dtype for t in half.store.values()} == {torch.bfloat16}
    assert half.store.keys() == full.store.keys() and 2 * half.bytes == full.bytes
    torch.testing.assert_close(p16, p32, rtol=0, atol=5e-3)
    assert not torch.equal(p16, p32)  # the 16-bit keys/values were really used


PROTEINS = ["MKVLAAGGWYYK", "GGAALVKMWYKR", "WYYKKRMKVLAA", "KRWYAAGGMKVL"]  # 12 residues each
DRUGS = ["CCO", "N", "CC", "OCCO"]


def proteins_per_training_batch(model, tmp_path, monkeypatch, *extra) -> list[int]:
    """Train on 4 proteins x 4 drugs (batches of 4) and count the distinct proteins in each training step."""
    rows = [(p, d, (i * 7 + j * 3) % 5, "train") for i, p in enumerate(PROTEINS) for j, d in enumerate(DRUGS)]
    rows += [(PROTEINS[0], "O", 1.0, "val"), (PROTEINS[1], "O", 2.0, "test")]
    data = write_csv(tmp_path / "pairs.csv", rows, ("protein", "smiles", "y", "split"))
    counts, real_get = [], SpanCache.get

    def counting_get(self, spans):
        if torch.is_grad_enabled():  # a training step, not evaluation
            counts.append(
                len({key for key, ids, _ in spans if len(ids) >= 22})
            )  # protein spans: 10 + 12 + text
        return real_get(self, spans)

    monkeypatch.setattr(SpanCache, "get", counting_get)
    template = "The protein is <Protein> {protein}. The drug is <SMILES> {smiles}. Affinity <BA>"
    args = ["--split-column", "split", "--char-level", "Protein", "--char-level", "SMILES", *extra]
    res = train_user_task(model, data, tmp_path / "run", *args, epochs=2, template=template)
    assert res.exit_code == 0, res.output
    return counts


def test_train_with_a_cache_budget_groups_batches_by_protein(model_dir, tmp_path, monkeypatch):
    counts = proteins_per_training_batch(model_dir("llama"), tmp_path, monkeypatch, "--cache-budget-gb", 2e-5)
    assert counts == [1] * 8  # 16 rows / 4 a batch x 2 epochs, one protein each
    cache = json.loads((tmp_path / "run" / "metrics.json").read_text())["span_cache"]
    assert cache["evictions"] > 0 and cache["bytes"] <= 2e-5 * 2**30


def test_train_without_a_budget_mixes_proteins_in_a_batch(model_dir, tmp_path, monkeypatch):
    counts = proteins_per_training_batch(model_dir("llama"), tmp_path, monkeypatch)
    assert len(counts) == 8 and max(counts) > 1


def test_a_second_run_reads_its_spans_from_the_disk_store(model_dir, tmp_path):
    rows = [(p, d, (i * 7 + j * 3) % 5, "train") for i, p in enumerate(PROTEINS) for j, d in enumerate(DRUGS)]
    rows += [(PROTEINS[0], "O", 1.0, "val"), (PROTEINS[1], "O", 2.0, "test")]
    data = write_csv(tmp_path / "pairs.csv", rows, ("protein", "smiles", "y", "split"))
    template = "The protein is <Protein> {protein}. The drug is <SMILES> {smiles}. Affinity <BA>"
    args = ["--split-column", "split", "--char-level", "Protein", "--char-level", "SMILES"]
    args += ["--span-store", tmp_path / "spans"]
    stats, metrics = [], []
    for run in ("first", "second"):
        res = train_user_task(model_dir("llama"), data, tmp_path / run, *args, epochs=1, template=template)
        assert res.exit_code == 0, res.output
        metrics.append(json.loads((tmp_path / run / "metrics.json").read_text()))
        stats.append(metrics[-1]["span_cache"])
    assert stats[0]["computed_tokens"] > 0 and stats[0]["disk_hits"] == 0
    assert stats[1]["computed_tokens"] == 0 and stats[1]["disk_hits"] == stats[0]["misses"]
    assert metrics[1]["test_mse"] == pytest.approx(metrics[0]["test_mse"], rel=1e-6)
