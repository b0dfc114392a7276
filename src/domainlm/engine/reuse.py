"""Reusing the keys and values of isolated spans.

Under isolated attention with frozen domain tags, a span's keys and values in every layer depend on the
span alone: its tokens, its tag and its positions, which restart at 0 in every span (see
`engine.encoding`). So each distinct span (a protein, a drug, a prompt prefix) is run through the model
once and its per-layer keys/values are kept; a training step then runs only the function segment (the
function tag and what follows) through the layers, attending to the stored keys/values. Predictions and
gradients equal the full isolated forward's up to float rounding (tested).

The store is an LRU bounded by a byte budget: when every span fits, each is computed once per run; when
not (a 7B model), batches grouped by span (`group`) still compute each span once per batch.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch

from domainlm.batching import pad_batch
from domainlm.engine import attention
from domainlm.engine.encoding import EncodedExample, check_fits
from domainlm.engine.model import TaggedModel, TaggedOutput
from domainlm.errors import DomainLMError

SpanKey = tuple[int, ...]


@dataclass
class ReuseStats:
    hits: int = 0
    misses: int = 0
    computed_tokens: int = 0
    evictions: int = 0
    disk_hits: int = 0  # spans read back from the disk store instead of computed


def span_key(ids: list[int], slots: list[int]) -> SpanKey:
    # Tag slots become negative numbers so a tag position never collides with a token id.
    return tuple(i if s < 0 else -(s + 1) for i, s in zip(ids, slots))


def split_example(ex: EncodedExample) -> tuple[list[tuple[SpanKey, list[int], list[int]]], int]:
    """(spans in order, start of the function segment). Spans are the segments before the function tag."""
    if ex.readout < 0:
        raise DomainLMError("span reuse needs inputs that end in a function tag")
    func = ex.segments[ex.readout]
    start = ex.segments.index(func)
    spans, s = [], 0
    while s < start:
        e = s
        while e < start and ex.segments[e] == ex.segments[s]:
            e += 1
        ids, slots = ex.ids[s:e], ex.tag_slots[s:e]
        spans.append((span_key(ids, slots), ids, slots))
        s = e
    return spans, start


def domain_tag_digest(tm: TaggedModel) -> str:
    """Identifies the domain tags a span's keys/values depend on: names, table offsets and values. Memoised
    on the tensors' version counters, so a step pays no device-to-host copy while the tags stay put."""
    offsets = tm.encoder.offsets.items()
    domain = [(n, o, tm.tag_vectors[n]) for n, o in offsets if tm.specs[n].kind == "domain"]
    signature = tuple((n, o, id(v), v._version) for n, o, v in domain)
    memo = getattr(tm, "_domain_digest", None)
    if memo is not None and memo[0] == signature:
        return memo[1]
    digest = hashlib.sha1()
    for name, offset, vectors in domain:
        digest.update(f"{name}@{offset};".encode())
        digest.update(vectors.detach().float().cpu().numpy().tobytes())
    tm._domain_digest = (signature, digest.hexdigest())
    return tm._domain_digest[1]


def longest_span_key(tm: TaggedModel, item, index: int = 0) -> SpanKey:
    """The key of an input's longest span (e.g. its protein): what batches are grouped by."""
    spans, _ = split_example(tm.encoder.encode(item, index, isolate=True))
    return max(spans, key=lambda s: len(s[1]))[0] if spans else ()


class SpanCache:
    """Per-layer keys/values of spans, computed once and kept within `budget_bytes` (None: no limit).

    A span's entry is one tensor [layers, 2 (key, value), kv_heads, length, head_dim], so a batch's store is
    assembled with one copy per span rather than one per span, layer and key/value (on a GPU the per-copy
    launch cost, not the arithmetic, is what a reused step spends its time on)."""

    def __init__(
        self,
        tm: TaggedModel,
        *,
        budget_bytes: int | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 16,
        disk: str | os.PathLike | None = None,
    ):
        """`disk`: a folder to keep every span in as well (`engine.span_disk`), read back when memory lacks
        it: a store beyond `budget_bytes` spills there, and later runs on the same model and tags reuse it."""
        if not tm.attention_hook:
            raise DomainLMError(
                f"span reuse needs a model family that uses the attention interface; "
                f"{type(tm.base).__name__} does not"
            )
        self.tm, self.budget, self.dtype, self.batch_size = tm, budget_bytes, dtype, batch_size
        # Keyed by the domain tags' values too: a store shared by several runs on one model (a sweep) never
        # serves keys/values computed under other domain tags.
        self.store: OrderedDict[tuple[str, SpanKey], torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.stats = ReuseStats()
        self.disk = None
        if disk is not None:
            from domainlm.engine.span_disk import SpanDisk, model_key

            stored = dtype or tm.base.get_input_embeddings().weight.dtype
            self.disk = SpanDisk(disk, model_key(tm.base, stored))

    def get(self, spans: list[tuple[SpanKey, list[int], list[int]]]) -> dict[SpanKey, list]:
        wanted = {key: (ids, slots) for key, ids, slots in spans}
        version = domain_tag_digest(self.tm)
        found = {}
        for key in wanted:
            if (version, key) in self.store:
                self.store.move_to_end((version, key))
                found[key] = self.store[(version, key)]
                self.stats.hits += 1
        for key in wanted:
            kv = None if key in found or self.disk is None else self.disk.get(version, key)
            if kv is not None:
                found[key] = kv.to(self.tm.device)
                self._insert((version, key), found[key])
                self.stats.disk_hits += 1
        missing = [(k, *wanted[k]) for k in wanted if k not in found]
        self.stats.misses += len(missing)
        missing.sort(key=lambda x: len(x[1]))
        for s in range(0, len(missing), self.batch_size):
            chunk = missing[s : s + self.batch_size]
            for key, kv in zip([c[0] for c in chunk], self._compute(chunk)):
                found[key] = kv
                self._insert((version, key), kv)
                if self.disk is not None:
                    self.disk.put(version, key, kv)
        return found

    def flush(self) -> None:
        """Write spans still buffered for the disk store (also done when the process exits)."""
        if self.disk is not None:
            self.disk.flush()

    def entry(self, key: SpanKey) -> torch.Tensor | None:
        """A span's stored keys/values under the model's current domain tags (None: not stored)."""
        return self.store.get((domain_tag_digest(self.tm), key))

    def _insert(self, key: tuple[str, SpanKey], kv: torch.Tensor) -> None:
        size = kv.numel() * kv.element_size()
        if self.budget is not None and size > self.budget:
            return
        self.store[key] = kv
        self.bytes += size
        while self.budget is not None and self.bytes > self.budget:
            _, old = self.store.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
            self.stats.evictions += 1

    @torch.no_grad()
    def _compute(self, chunk) -> list[torch.Tensor]:
        tm = self.tm
        features = [{"input_ids": ids, "tag_index": slots} for _, ids, slots in chunk]
        batch = pad_batch(features, tm.encoder.placeholder, device=tm.device)
        embeds, mask = tm.embed(batch["input_ids"], batch["tag_index"]), batch["attention_mask"]
        positions = torch.arange(mask.shape[1], device=tm.device).expand(mask.shape)  # every span from 0
        record: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with attention.override(attention.AttentionOverride(record=record)):
            tm.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        self.stats.computed_tokens += int(mask.sum())
        layers = [record[layer] for layer in sorted(record)]
        # One [L, 2, KV, n, D] tensor per span, built from the recorded slices directly: stacking the whole
        # chunk first would hold a second copy of every layer's keys/values at once.
        out = []
        for i, c in enumerate(chunk):
            end = len(c[1])
            span = torch.stack([torch.stack((k[i, :, :end], v[i, :, :end])) for k, v in layers]).detach()
            out.append(span.to(self.dtype) if self.dtype is not None else span)
        return out


def reused_forward(tm: TaggedModel, cache: SpanCache, inputs: list, labels=None) -> TaggedOutput:
    """The function segments of `inputs` through the model, attending to their spans' stored keys/values."""
    examples = [tm.encoder.encode(item, i, isolate=True) for i, item in enumerate(inputs)]
    for i, ex in enumerate(examples):  # an over-long input would otherwise fail on a position index
        check_fits(ex, True, tm.max_positions, item=i)
    heads = {ex.function_tag for ex in examples}
    if len(heads) != 1 or None in heads:
        raise DomainLMError("span reuse needs every input to end in the same function tag")
    head = heads.pop()
    split = [split_example(ex) for ex in examples]
    stored = cache.get([span for spans, _ in split for span in spans])
    device = tm.device
    n_layers = next(iter(stored.values())).shape[0] if stored else 0
    prefix_len = [sum(len(ids) for _, ids, _ in spans) for spans, _ in split]
    P = max(prefix_len)
    func = [  # the function segments: what runs through the layers
        {"input_ids": ex.ids[s:], "tag_index": ex.tag_slots[s:], "position_ids": ex.positions(True)[s:]}
        for ex, (_, s) in zip(examples, split)
    ]
    batch = pad_batch(func, tm.encoder.placeholder, device=device)
    real_q = batch["attention_mask"].bool()
    B, Q = real_q.shape

    prefix = _assemble(stored, split, P, device) if P and n_layers else []

    real_p = torch.tensor([[1] * n + [0] * (P - n) for n in prefix_len], device=device).bool()
    own = real_q.unsqueeze(1).expand(B, Q, Q)
    if tm.causal:
        own = own & torch.ones(Q, Q, dtype=torch.bool, device=device).tril()
    own = own | (torch.eye(Q, dtype=torch.bool, device=device) & ~real_q.unsqueeze(2))
    mask = torch.cat([real_p.unsqueeze(1).expand(B, Q, P), own], dim=2).unsqueeze(1)

    override = attention.AttentionOverride(mask=mask, prefix=prefix or None)
    with attention.override(override):
        hidden = tm.backbone(
            inputs_embeds=tm.embed(batch["input_ids"], batch["tag_index"]),
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).last_hidden_state
    readout = torch.tensor([ex.readout - start for ex, (_, start) in zip(examples, split)], device=device)
    label_tensor = tm.label_tensor(head, labels) if labels is not None else None
    return tm.apply_head(TaggedOutput(), head, tm.read_out(hidden, readout, head), label_tensor)


def _assemble(stored, split, length: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's stored keys/values for a batch, each example's spans laid end to end: one copy a span."""
    ref = next(iter(stored.values()))
    layers, _, kv_heads, _, head_dim = ref.shape
    kv = ref.new_zeros((layers, 2, len(split), kv_heads, length, head_dim), device=device)
    for b, (spans, _) in enumerate(split):
        offset = 0
        for key, ids, _ in spans:
            kv[:, :, b, :, offset : offset + len(ids)] = stored[key]
            offset += len(ids)
    return [(kv[layer, 0], kv[layer, 1]) for layer in range(layers)]
