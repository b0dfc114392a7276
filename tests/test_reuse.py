"""Span key/value reuse must equal the full isolated forward: predictions and gradients."""

import pytest
import torch

from domainlm.engine.reuse import SpanCache, reused_forward
from tiny_models import PAIR_TEMPLATE, PAIRS, tagged_pair_model


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "qwen2"])
def test_reused_path_equals_full_isolated_path(family):
    tm = tagged_pair_model(family)
    texts = [PAIR_TEMPLATE.format(p=p, s=s) for p, s in PAIRS]
    labels = [5.0, 7.0, 6.0, 6.5]

    full = tm(**tm.encode(texts, labels, isolate=True))
    full.loss.backward()
    grads_full = {k: p.grad.clone() for k, p in tm.trainable_parameters().items()}
    tm.zero_grad()

    cache = SpanCache(tm)
    reused = reused_forward(tm, cache, texts, labels)
    reused.loss.backward()
    grads_reused = {k: p.grad.clone() for k, p in tm.trainable_parameters().items()}

    torch.testing.assert_close(reused.predictions, full.predictions, rtol=1e-5, atol=1e-5)
    for k in grads_full:
        torch.testing.assert_close(grads_reused[k], grads_full[k], rtol=1e-4, atol=1e-5)
    # one shared prefix + 3 distinct protein spans + 3 distinct drug spans, each computed once
    assert cache.stats.misses == 1 + 3 + 3
    reused_forward(tm, cache, texts, labels)
    assert cache.stats.misses == 7 and cache.stats.hits >= 7


def test_budget_evicts_but_stays_exact():
    tm = tagged_pair_model("llama")
    texts = [PAIR_TEMPLATE.format(p=p, s=s) for p, s in PAIRS]
    with torch.no_grad():
        expected = tm(**tm.encode(texts, isolate=True)).predictions
        cache = SpanCache(tm, budget_bytes=20_000)
        for _ in range(2):
            got = reused_forward(tm, cache, texts).predictions
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert cache.bytes <= 20_000 and cache.stats.evictions > 0


def test_windowed_long_spans_reuse_exactly():
    tm = tagged_pair_model("bert")
    tm.max_positions = 64
    tm.set_length_policy("window", 20)
    texts = [
        PAIR_TEMPLATE.format(p="MKVLAAGGWYYKKR" * 4, s="CCO"),
        PAIR_TEMPLATE.format(p="MKV", s="CC(=O)N"),
    ]
    encoded = tm.encoder.encode(texts[0], 0, isolate=True)
    assert encoded.windows == 2 and max(encoded.positions(True)) < 64
    with torch.no_grad():
        expected = tm(**tm.encode(texts, isolate=True)).predictions
        got = reused_forward(tm, SpanCache(tm), texts).predictions
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_shared_store_never_serves_spans_of_other_domain_tags():
    tm = tagged_pair_model("llama")
    texts = [PAIR_TEMPLATE.format(p=p, s=s) for p, s in PAIRS]
    cache = SpanCache(tm)
    with torch.no_grad():
        reused_forward(tm, cache, texts)
        assert cache.stats.misses == 7
        reused_forward(tm, cache, texts)
        assert cache.stats.misses == 7  # the same tags: every span a hit
        tm.tag_vectors["SMILES"].add_(0.5)  # another run's <SMILES>
        got = reused_forward(tm, cache, texts).predictions
        expected = tm(**tm.encode(texts, isolate=True)).predictions
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert cache.stats.misses == 7 + 7  # the store is keyed by all domain tags: every span recomputed


def test_a_sweep_shares_one_store_between_runs(tmp_path):
    from domainlm.tagruns import train_tagged_task
    from domainlm.tasks.base import Example, TaskData, TaskSpec
    from domainlm.training import TrainConfig

    tm = tagged_pair_model("llama")
    spec = TaskSpec("pairs", PAIR_TEMPLATE.replace("{p}", "{protein}").replace("{s}", "{smiles}"))
    rows = [Example(str(i), {"protein": p, "smiles": s}, 5.0 + i) for i, (p, s) in enumerate(PAIRS)]
    data = TaskData(rows, rows[:2], rows[2:])
    cache = SpanCache(tm)
    config = TrainConfig(epochs=1, batch_size=2, grad_accum=1, lr=1e-3)
    for run in ("a", "b"):
        tm.remove_tag("BA")
        train_tagged_task(spec, data, tm, tmp_path / run, config, span_cache=cache)
        if run == "a":
            first = cache.stats.misses
    assert cache.stats.misses == first  # the second run computed nothing anew
    with pytest.raises(Exception, match="belong to the model"):
        train_tagged_task(spec, data, tagged_pair_model("llama"), tmp_path / "c", config, span_cache=cache)
