"""The span store on disk: spans computed once are read back by later stores on the same model and domain
tags (predictions unchanged), never across a changed tag or model; a memory budget spills to it; a shard
only counts once whole."""

import pytest
import torch

from domainlm.engine.reuse import SpanCache, reused_forward
from domainlm.errors import DomainLMError
from tiny_models import PAIR_TEMPLATE, PAIRS, tagged_pair_model

TEXTS = [PAIR_TEMPLATE.format(p=p, s=s) for p, s in PAIRS]


def predictions(tm, cache, texts=TEXTS) -> torch.Tensor:
    with torch.no_grad():
        return reused_forward(tm, cache, texts).predictions


def test_a_later_store_reads_every_span_back_instead_of_computing_it(tmp_path):
    tm = tagged_pair_model()
    first = SpanCache(tm, disk=tmp_path)
    expected = predictions(tm, first)
    first.flush()
    assert first.stats.computed_tokens > 0 and list(tmp_path.rglob("shard-*.safetensors"))
    second = SpanCache(tm, disk=tmp_path)  # a new run: empty memory
    torch.testing.assert_close(predictions(tm, second), expected, rtol=0, atol=0)
    assert second.stats.computed_tokens == 0 and second.stats.disk_hits == first.stats.misses


def test_a_changed_domain_tag_or_model_is_never_served_stale_spans(tmp_path):
    tm = tagged_pair_model()
    store = SpanCache(tm, disk=tmp_path)
    predictions(tm, store)
    store.flush()
    with torch.no_grad():
        tm.tag_vectors["Protein"].add_(0.5)
    changed = SpanCache(tm, disk=tmp_path)
    got = predictions(tm, changed)
    assert changed.stats.disk_hits == 0 and changed.stats.computed_tokens > 0
    full = tm(**tm.encode(TEXTS, isolate=True)).predictions
    torch.testing.assert_close(got, full.detach(), rtol=1e-5, atol=1e-5)

    other = tagged_pair_model()  # same shapes and tags, other weights
    with torch.no_grad():
        other.base.model.layers[0].mlp.down_proj.weight.mul_(1.5)
        for name, vectors in tm.tag_vectors.items():
            other.tag_vectors[name].copy_(vectors)
    fresh = SpanCache(other, disk=tmp_path)
    predictions(other, fresh)
    assert fresh.stats.disk_hits == 0


def test_a_memory_budget_spills_to_disk_and_reads_back(tmp_path):
    tm = tagged_pair_model()
    cache = SpanCache(tm, budget_bytes=100, disk=tmp_path)  # less than any one span: memory holds none
    expected = predictions(tm, SpanCache(tm))
    torch.testing.assert_close(predictions(tm, cache), expected, rtol=1e-6, atol=1e-6)
    computed = cache.stats.computed_tokens
    cache.flush()
    torch.testing.assert_close(predictions(tm, cache), expected, rtol=1e-6, atol=1e-6)
    assert not cache.store and cache.stats.computed_tokens == computed and cache.stats.disk_hits > 0


def test_half_written_shards_are_ignored_and_broken_ones_named(tmp_path):
    tm = tagged_pair_model()
    store = SpanCache(tm, disk=tmp_path)
    predictions(tm, store)
    store.flush()
    shard = next(tmp_path.rglob("shard-*.safetensors"))
    (shard.parent / f".{shard.name}.abc.tmp").write_bytes(b"killed while writing")  # what a kill leaves
    again = SpanCache(tm, disk=tmp_path)
    predictions(tm, again)
    assert again.stats.computed_tokens == 0
    shard.write_bytes(b"\x00" * 16)
    with pytest.raises(DomainLMError, match=f"span store {shard}.*delete it"):
        predictions(tm, SpanCache(tm, disk=tmp_path))
