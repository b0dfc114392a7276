"""TaggedModel: a frozen Hugging Face model conditioned by trainable tag vectors, heads at function tags."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from domainlm.backbone import is_causal_lm, load, max_positions
from domainlm.batching import pad_batch
from domainlm.engine import attention
from domainlm.engine.encoding import IGNORE, EncodedExample, Encoder, LengthPolicy, check_fits
from domainlm.engine.heads import Head, HeadSpec, read_out
from domainlm.engine.library import TagLibrary, embedding_fingerprint, merge_libraries
from domainlm.engine.tag_specs import TagSpec, initial_tag, text_tag
from domainlm.errors import DomainLMError, InputError


@dataclass
class TaggedOutput:
    loss: torch.Tensor | None = None
    predictions: torch.Tensor | None = None  # regression values in label units, or class logits
    task_loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # LM logits, when asked for
    features: torch.Tensor | None = None  # the head's input: read-out states [B, d]


class TaggedModel(nn.Module):
    """Wrap any Hugging Face model with input embeddings; only tags and heads train."""

    def __init__(self, model, tokenizer, *, name: str | None = None):
        super().__init__()
        self.base = model
        self.tokenizer = tokenizer
        self.name = (
            name or getattr(model.config, "_name_or_path", "") or f"{model.config.model_type} (in-process)"
        )
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.base.eval()
        if hasattr(self.base.config, "use_cache"):
            self.base.config.use_cache = False
        self.causal = is_causal_lm(model)
        self.backbone = model.base_model if self.causal else model
        self.attention_hook = attention.install(model)
        self.tag_vectors = nn.ParameterDict()
        self.heads = nn.ModuleDict()
        self.specs: dict[str, TagSpec] = {}
        self._encoder: Encoder | None = None
        self.max_positions = max_positions(model.config)
        self.length_policy = LengthPolicy(limit=self.max_positions)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, dtype: str | torch.dtype = "float32", device: str | None = None, **kwargs
    ) -> TaggedModel:
        """Load a causal LM (Llama, Mistral, Qwen2, GPT-2, ...) or an encoder (BERT family) and wrap it;
        `name_or_path` as `domainlm.backbone.resolve` takes it."""
        loaded = load(name_or_path, "tags", dtype=dtype, **kwargs)
        tm = cls(loaded.model, loaded.tokenizer, name=name_or_path)
        if device:
            tm.to(device)
        return tm

    @property
    def hidden_size(self) -> int:
        return self.base.get_input_embeddings().weight.shape[1]

    @property
    def device(self) -> torch.device:
        return self.base.get_input_embeddings().weight.device

    def add_tag(
        self,
        name: str,
        kind: str = "domain",
        *,
        length: int = 10,
        head: str | None = None,
        n_classes: int | None = None,
        classes: list[str] | None = None,
        char_level: bool = False,
        label_mean: float = 0.0,
        label_std: float = 1.0,
        readout: str = "last",
        head_hidden: int = 0,
        init_text: str | None = None,
    ) -> TagSpec:
        """Register a tag initialised as in the paper, or from the embeddings of `init_text`'s tokens; a
        function tag may carry a regression or n-way head."""
        if name in self.specs:
            raise DomainLMError(f"tag <{name}> already exists")
        head_spec = None
        if head is not None:
            if classes is not None and n_classes is None:
                n_classes = len(classes)
            head_spec = HeadSpec(
                head,
                n_classes=n_classes,
                classes=classes,
                label_mean=label_mean,
                label_std=label_std,
                readout=readout,
                hidden=head_hidden,
            )
        spec = TagSpec(name, kind, length=length, char_level=char_level, head=head_spec)
        embedding = self.base.get_input_embeddings()
        # Gemma's embedding module multiplies its rows by sqrt(hidden): a tag must start at the norm of the
        # token vectors the model actually sees, not of the raw table.
        scale = float(getattr(embedding, "embed_scale", 1.0))
        vectors = initial_tag(embedding.weight, length) * scale
        if init_text is not None:
            ids = self.tokenizer(init_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise DomainLMError(f"tag <{name}>: its initial text {init_text!r} has no tokens")
            with torch.no_grad():
                words = embedding.weight[torch.tensor(ids, device=embedding.weight.device)] * scale
                vectors = text_tag(words, vectors[0], length)
        self._install(spec, vectors)
        return spec

    def remove_tag(self, name: str) -> None:
        """Drop a tag and its head (e.g. to train a function tag again from scratch)."""
        if name not in self.specs:
            raise DomainLMError(f"no tag <{name}> to remove; the model holds {sorted(self.specs)}")
        del self.specs[name], self.tag_vectors[name]
        if name in self.heads:
            del self.heads[name]
        self._encoder = None

    def _install(self, spec: TagSpec, vectors: torch.Tensor, head_state: dict | None = None) -> None:
        if vectors.shape != (spec.length, self.hidden_size):
            raise DomainLMError(
                f"tag <{spec.name}> has shape {tuple(vectors.shape)}, expected "
                f"({spec.length}, {self.hidden_size})"
            )
        if spec.name in self.specs and self.specs[spec.name].length != spec.length:
            raise DomainLMError(f"tag <{spec.name}> exists with length {self.specs[spec.name].length}")
        param = nn.Parameter(vectors.detach().float().clone().to(self.device))
        if spec.name in self.tag_vectors:
            self.tag_vectors[spec.name].data.copy_(param.data)
        else:
            self.tag_vectors[spec.name] = param
        if spec.head is not None:
            head = Head(self.hidden_size, spec.head).to(self.device)
            if head_state:
                head.load_state_dict(head_state)
            self.heads[spec.name] = head
        self.specs[spec.name] = spec
        self._encoder = None

    # ---- what trains ------------------------------------------------------------------------------------
    def set_trainable(self, names: Sequence[str]) -> None:
        """Train exactly the tags `names` and their heads; every other tag and head is frozen."""
        for name in self.specs:
            self.tag_vectors[name].requires_grad_(name in names)
            if name in self.heads:
                self.heads[name].requires_grad_(name in names)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters().values())

    def num_total(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # the frozen model never uses dropout: tags see one fixed function
        return self

    # ---- encoding -----------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            offsets, start = {}, 0
            for name in self.tag_vectors:
                offsets[name] = start
                start += self.specs[name].length
            pad = self.tokenizer.pad_token_id
            placeholder = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
            eos = self.tokenizer.eos_token_id  # closes a generative tag's target
            self._encoder = Encoder(self.tokenizer, self.specs, offsets, placeholder, self.length_policy, eos)
        return self._encoder

    def set_length_policy(self, mode: str = "error", max_span: int | None = None) -> None:
        """How over-long inputs are handled (see `domainlm.engine.encoding.LengthPolicy`)."""
        self.length_policy = LengthPolicy(mode, max_span, self.max_positions)
        self._encoder = None

    def encode(
        self,
        inputs,
        labels=None,
        *,
        isolate: bool = False,
        padding_side: str | None = None,
        lm_labels: bool = False,
    ) -> dict:
        """Tensors for `self(**batch)`. `inputs` are strings with <Tag> markers or rendered template parts.

        `isolate=True`: each domain span attends only to itself (see `domainlm.engine.encoding`)."""
        if isinstance(inputs, str):
            inputs = [inputs]
        examples = [self.encoder.encode(item, i, isolate) for i, item in enumerate(inputs)]
        for i, ex in enumerate(examples):
            check_fits(ex, isolate, self.max_positions, item=i)
        function_tags = {ex.function_tag for ex in examples}
        if len(function_tags) > 1:  # one batch, one head: a mixed batch would silently predict nothing
            raise InputError(
                "a batch mixes inputs ending in different function tags (or in none): "
                f"{sorted(str(t) for t in function_tags)}; encode each kind in a batch of its own"
            )
        batch = collate_examples(
            examples,
            self.tokenizer,
            padding_side or self.tokenizer.padding_side or "right",
            isolate=isolate,
            lm_labels=lm_labels and self.causal,
        )
        if labels is not None:
            if len(labels) != len(examples):
                raise InputError(f"{len(labels)} labels for {len(examples)} inputs")
            if batch["head"] is None:  # not one function tag for all
                raise InputError("labelled inputs must all end in the same function tag")
            batch["labels"] = self.label_tensor(batch["head"], labels)
        return batch

    def label_tensor(self, function_tag: str, labels) -> torch.Tensor:
        """Labels checked against the tag's head: finite floats, or class indices / names."""
        head = self.specs[function_tag].head
        if head is None:
            raise InputError(f"function tag <{function_tag}> has no head to train with labels")
        dtype = torch.float32 if head.type == "regression" else torch.long
        return torch.as_tensor(_label_values(labels, head), dtype=dtype)

    # ---- forward ------------------------------------------------------------------------------------
    def tag_table(self) -> torch.Tensor:
        return torch.cat([self.tag_vectors[n] for n in self.tag_vectors], dim=0)

    def embed(self, input_ids: torch.Tensor, tag_index: torch.Tensor) -> torch.Tensor:
        embeds = self.base.get_input_embeddings()(input_ids)
        is_tag = tag_index >= 0
        if bool(is_tag.any()):
            table = self.tag_table().to(embeds.dtype)
            if int(tag_index.max()) >= table.shape[0]:
                raise DomainLMError(
                    "batch refers to tags this model does not hold; encode it with this model"
                )
            embeds = torch.where(is_tag.unsqueeze(-1), table[tag_index.clamp(min=0)], embeds)
        return embeds

    def hidden_states(
        self,
        input_ids,
        attention_mask,
        tag_index,
        position_ids,
        segment_ids=None,
        function_segment=None,
        isolate: bool = False,
    ) -> torch.Tensor:
        embeds = self.embed(input_ids, tag_index)
        kwargs = dict(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids)
        if not isolate:
            return self.backbone(**kwargs).last_hidden_state
        if not self.attention_hook:
            raise DomainLMError(
                f"isolated attention needs a model family that uses the attention interface; "
                f"{type(self.base).__name__} does not"
            )
        mask = isolation_mask(segment_ids, function_segment, attention_mask, causal=self.causal)
        with attention.override(attention.AttentionOverride(mask=mask)):
            return self.backbone(**kwargs).last_hidden_state

    def forward(
        self,
        input_ids,
        attention_mask,
        tag_index,
        position_ids,
        readout_index=None,
        segment_ids=None,
        function_segment=None,
        head=None,
        labels=None,
        lm_labels=None,
        isolate: bool = False,
        return_logits: bool = False,
        lm_weight: float = 1.0,
    ) -> TaggedOutput:
        hidden = self.hidden_states(
            input_ids, attention_mask, tag_index, position_ids, segment_ids, function_segment, isolate
        )
        out = TaggedOutput()
        if lm_labels is not None or return_logits:
            if not self.causal:
                raise DomainLMError(
                    f"{type(self.base).__name__} has no LM head: the next-token loss (stage 1, "
                    "--enrich) needs a causal LM"
                )
            output_layer = self.base.get_output_embeddings()
            if return_logits:
                out.logits = output_layer(hidden)
            if lm_labels is not None:
                # the output layer only where a label is predicted: a large vocabulary makes full logits
                # the costliest part of a step when the targets are short (translation, QA answers)
                targets = lm_labels[:, 1:]
                labelled = targets != IGNORE
                logits = (
                    out.logits[:, :-1][labelled] if return_logits else output_layer(hidden[:, :-1][labelled])
                )
                out.lm_loss = F.cross_entropy(logits.float(), targets[labelled])
        if head is not None and head in self.heads:
            self.apply_head(out, head, self.read_out(hidden, readout_index, head), labels)
        elif head is not None and out.lm_loss is not None:  # a generative tag: its task loss is the target's
            out.task_loss = out.loss = out.lm_loss
            return out
        if out.lm_loss is not None:  # else the loss is the task loss `apply_head` set, if any
            weighted = lm_weight * out.lm_loss
            out.loss = weighted if out.task_loss is None else out.task_loss + weighted
        return out

    def read_out(self, hidden: torch.Tensor, readout_index: torch.Tensor, head: str) -> torch.Tensor:
        """The head's input from [B, L, d] states; `readout_index` is the function tag's last slot."""
        return read_out(hidden, readout_index, self.specs[head].head, self.specs[head].length)

    def apply_head(self, out: TaggedOutput, head: str, hidden: torch.Tensor, labels=None) -> TaggedOutput:
        module = self.heads[head]
        out.features = hidden
        raw = module(hidden)
        out.predictions = module.predictions(raw)
        if labels is not None:
            out.task_loss = module.loss(raw, labels.to(raw.device))
            out.loss = out.task_loss
        return out

    # ---- generation ---------------------------------------------------------------------------------
    def generate(
        self,
        inputs,
        *,
        max_new_tokens: int = 64,
        num_beams: int = 1,
        stop_at_newline: bool = True,
        batch_size: int = 16,
        details: bool = False,
    ):
        """The text the LM head writes after each prompt (a string with <Tag> markers, or rendered parts),
        in input order: batches left-padded, tags spliced into the input embeddings, transformers'
        `generate` with its KV cache, greedy (`num_beams=1`) or beam search. A prompt ending in a generative
        function tag (<Translate>) continues with that tag's target. `details=True` returns a `Generated`
        (texts, new token ids, seconds) instead of the texts."""
        from domainlm.engine.generation import Decoding, Generated, generate_batch

        if not self.causal:
            raise DomainLMError(f"{type(self.base).__name__} has no LM head and cannot generate text")
        if isinstance(inputs, str):
            inputs = [inputs]
        decoding = Decoding(max_new_tokens, num_beams, stop_at_newline, batch_size)
        was_training = self.training
        self.eval()
        lengths = [len(self.encoder.encode(x, i).ids) for i, x in enumerate(inputs)]
        order = sorted(range(len(inputs)), key=lambda i: lengths[i])  # similar lengths pad little
        done: dict[int, tuple[str, list[int]]] = {}
        total = Generated()
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = self.encode([inputs[i] for i in idx], padding_side="left")
            with torch.no_grad():
                embeds = self.embed(batch["input_ids"].to(self.device), batch["tag_index"].to(self.device))
            out = generate_batch(
                self.base,
                self.tokenizer,
                decoding,
                inputs_embeds=embeds,
                attention_mask=batch["attention_mask"].to(self.device),
            )
            total.seconds += out.seconds
            done.update({i: (t, ids) for i, t, ids in zip(idx, out.texts, out.token_ids)})
        self.train(was_training)
        total.texts = [done[i][0] for i in range(len(inputs))]
        total.token_ids = [done[i][1] for i in range(len(inputs))]
        return total if details else total.texts

    # ---- tag libraries ----------------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        return embedding_fingerprint(self.base.get_input_embeddings().weight)

    def save_tags(
        self,
        directory: str | Path,
        names: Sequence[str] | None = None,
        *,
        training: dict | None = None,
        metrics: dict | None = None,
    ) -> Path:
        """Write the tags `names` (default all) and their heads as a tag library."""
        names = list(names or self.specs)
        tensors = {}
        for n in names:
            tensors[f"tag.{n}"] = self.tag_vectors[n].detach().float().cpu()
            if n in self.heads:
                for k, v in self.heads[n].state_dict().items():
                    tensors[f"head.{n}.{k}"] = v.detach().float().cpu()
        specs = {n: self.specs[n] for n in names}
        library = TagLibrary(self.name, self.fingerprint(), self.hidden_size, specs, tensors)
        library.training, library.metrics = training or {}, metrics or {}
        return library.save(directory)

    def load_tags(self, *directories: str | Path, on_conflict: str | dict = "error") -> TagLibrary:
        """Load and merge tag libraries; tags made for another base model are refused."""
        libs = [d if isinstance(d, TagLibrary) else TagLibrary.load(d) for d in directories]
        for lib in libs:
            lib.check_compatible(self.fingerprint(), self.hidden_size, self.name)
        merged = merge_libraries(libs, on_conflict) if len(libs) > 1 else libs[0]
        for name, spec in merged.specs.items():
            parts = merged.tensors_for(name)
            self._install(spec, parts.pop("tag"), parts or None)  # what remains: the head's weights, if any
        return merged


def collate_examples(
    examples: list[EncodedExample], tokenizer, padding_side: str, *, isolate: bool, lm_labels: bool
) -> dict:
    if padding_side not in {"left", "right"}:
        raise DomainLMError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(ex.ids) for ex in examples)
    features = []
    for ex in examples:
        features.append(
            {
                "input_ids": ex.ids,
                "tag_index": ex.tag_slots,
                "position_ids": ex.positions(isolate),
                "segment_ids": ex.segments,
            }
        )
        if lm_labels:  # the next-token loss covers text (a generative tag's: its target), never tag slots
            start = max(ex.target_start, 0)
            features[-1]["lm_labels"] = [
                t if s < 0 and i >= start else IGNORE for i, (t, s) in enumerate(zip(ex.ids, ex.tag_slots))
            ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = pad_batch(features, pad, side=padding_side)
    shift = [length - len(ex.ids) if padding_side == "left" else 0 for ex in examples]
    readout = [ex.readout + n if ex.readout >= 0 else 0 for ex, n in zip(examples, shift)]
    batch["readout_index"] = torch.tensor(readout, dtype=torch.long)
    func_seg = [ex.segments[ex.readout] if ex.readout >= 0 else -1 for ex in examples]
    batch["function_segment"] = torch.tensor(func_seg, dtype=torch.long)
    heads = {ex.function_tag for ex in examples}
    batch["head"] = heads.pop() if len(heads) == 1 else None
    batch["isolate"] = isolate
    return batch


def isolation_mask(segment_ids, function_segment, attention_mask, *, causal: bool) -> torch.Tensor:
    """[B, 1, L, L] bool: a token sees its own segment; the function segment sees every real token."""
    seg_q = segment_ids.unsqueeze(2)
    seg_k = segment_ids.unsqueeze(1)
    real_k = attention_mask.bool().unsqueeze(1)
    in_func = (segment_ids == function_segment.unsqueeze(1)).unsqueeze(2)
    allowed = ((seg_q == seg_k) | in_func) & real_k
    if causal:
        idx = torch.arange(segment_ids.shape[1], device=segment_ids.device)
        allowed &= idx.view(1, 1, -1) <= idx.view(1, -1, 1)
    eye = torch.eye(segment_ids.shape[1], dtype=torch.bool, device=segment_ids.device).unsqueeze(0)
    allowed |= eye & ~attention_mask.bool().unsqueeze(2)  # padding rows see themselves, never NaN
    return allowed.unsqueeze(1)


def _label_values(labels, head: HeadSpec) -> list:
    out = []
    for i, y in enumerate(labels):
        if head.type == "classification":
            if isinstance(y, str):
                if not head.classes or y not in head.classes:
                    raise InputError(f"label {y!r} is not one of the classes {head.classes}", item=i)
                y = head.classes.index(y)
            if not (0 <= int(y) < head.n_classes):
                raise InputError(f"class index {y} out of range 0..{head.n_classes - 1}", item=i)
            out.append(int(y))
        else:
            try:
                v = float(y)
            except (TypeError, ValueError):
                raise InputError(f"label {y!r} is not a number", item=i) from None
            if not math.isfinite(v):
                raise InputError(f"label {y!r} is not a finite number", item=i)
            out.append(v)
    return out
