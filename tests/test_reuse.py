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
