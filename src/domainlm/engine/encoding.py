"""Turning marked-up text into model inputs: token ids with tag slots, positions, segments, readout index.

Layout of one example: [prefix specials] text ... <Tag>x p, data ... <Func>x p [suffix specials].
A new *segment* starts at every tag; segment 0 is whatever precedes the first tag. Under isolated
attention each segment sees only itself, except the function segment (from the last tag on), which sees
everything, and every segment's positions restart at 0, so a span's keys and values depend on the span
alone. The function segment then starts at the longest other segment's length.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from domainlm.engine.template import Part, parse_marked_text
from domainlm.errors import InputError

IGNORE = -100


@dataclass
class EncodedExample:
    ids: list[int] = field(default_factory=list)
    tag_slots: list[int] = field(default_factory=list)  # -1 or flat index into the tag table
    segments: list[int] = field(default_factory=list)
    function_tag: str | None = None
    readout: int = -1  # position of the function tag's last vector
    truncated: int = 0  # data tokens cut (overflow="truncate")
    # A generative function tag (no head): the first position after it. The tokens from there on are the
    # text it produces, closed by EOS, and the only ones its next-token loss covers.
    target_start: int = -1
    windows: int = 0  # extra windows a long data span was split into (overflow="window")

    def positions(self, isolate: bool) -> list[int]:
        if not isolate:
            return list(range(len(self.ids)))
        func_seg = self.segments[self.readout] if self.readout >= 0 else None
        counts = Counter(self.segments)
        func_start = max((n for s, n in counts.items() if s != func_seg), default=0)
        pos, seen = [], {}
        for s in self.segments:
            k = seen.get(s, 0)
            seen[s] = k + 1
            pos.append(func_start + k if s == func_seg else k)
        return pos


OVERFLOW_MODES = ("error", "truncate", "window")
SPAN_CACHE_ITEMS = 50_000  # tokenised data spans kept per encoder (least recently used go first)


@dataclass
class LengthPolicy:
    """What to do with inputs longer than the model takes. Never silent: touched inputs are counted.

    * error:    refuse the input, naming it (default);
    * truncate: keep the first tokens of over-long data spans: at most `max_span` each, and fewer where
                needed to fit the model's positions;
    * window:   cut a data span into windows of `max_span` tokens, each behind its own copy of the domain
                tag; under isolated attention every window restarts at position 0 and is encoded on its
                own, and the function tag sees them all.
    """

    mode: str = "error"
    max_span: int | None = None
    limit: int | None = None  # the model's position limit (absolute position embeddings)

    def __post_init__(self):
        if self.mode not in OVERFLOW_MODES:
            raise InputError(f"overflow must be one of {OVERFLOW_MODES}, got {self.mode!r}")
        if self.max_span is not None and self.max_span < 1:
            raise InputError("max_span must be >= 1")


def check_fits(
    ex: EncodedExample, isolate: bool, limit: int | None, *, source: str | None = None, item=None
) -> None:
    """Refuse an input longer than the model's positions, naming it: every path (training with or without
    span reuse, evaluation, prediction) checks before it runs the model, rather than failing on an index."""
    top = max(ex.positions(isolate), default=0)
    if limit and top >= limit:
        raise InputError(
            f"input is {len(ex.ids)} tokens (highest position {top}) but the model takes {limit} "
            "positions; shorten it or choose an overflow policy (--overflow truncate|window, "
            "--max-span-tokens)",
            source=source,
            item=item,
        )


class Encoder:
    """Tokenises parts the same way for every family; tags become placeholder slots."""

    def __init__(
        self,
        tokenizer,
        specs: dict,
        tag_offsets: dict[str, int],
        placeholder_id: int,
        policy: LengthPolicy | None = None,
        eos_id: int | None = None,
    ):
        self.policy = policy or LengthPolicy()
        self.eos_id = eos_id
        self.tokenizer = tokenizer
        self.specs = specs
        self.offsets = tag_offsets
        self.placeholder = placeholder_id
        self.prefix, self.suffix = _special_tokens(tokenizer)
        self._char_cache: dict[str, list[int]] = {}
        # Data spans recur (a protein in every pair it is measured in, epoch after epoch), and tokenising a
        # 2,000-residue protein character by character is what encoding spends its time on.
        self._span_cache: OrderedDict[tuple, tuple[int, ...]] = OrderedDict()
        self._space_joins = _space_joins_token(tokenizer)

    def parts(self, item, index: int) -> list[Part]:
        if isinstance(item, str):
            return parse_marked_text(item, self.specs)
        parts = list(item)
        for p in parts:
            if p.kind == "tag" and p.value not in self.specs:
                raise InputError(f"unknown tag <{p.value}>; known tags: {sorted(self.specs)}", item=index)
        return parts

    def encode(self, item, index: int = 0, isolate: bool = False) -> EncodedExample:
        pieces = self._pieces(self.parts(item, index))
        ex = self._assemble(pieces)
        policy = self.policy
        if policy.mode == "error" or not any(p[0] == "data" for p in pieces):
            return ex
        if policy.max_span is not None:
            cut = [self._limit_span(p, policy.max_span, policy.mode) for p in pieces]
            pieces = [q for group in cut for q in group]
            ex = self._assemble(pieces)
        while policy.mode == "truncate" and policy.limit and max(ex.positions(isolate)) >= policy.limit:
            over = max(ex.positions(isolate)) - policy.limit + 1
            longest = max(
                (i for i, p in enumerate(pieces) if p[0] == "data"), key=lambda i: len(pieces[i][1])
            )
            kind, ids, domain, cut_before = pieces[longest]
            if len(ids) <= 1:
                break
            keep = max(1, len(ids) - over)
            pieces[longest] = (kind, ids[:keep], domain, cut_before + len(ids) - keep)
            ex = self._assemble(pieces)
        return ex

    def _pieces(self, parts: list[Part]) -> list[tuple]:
        """("tag", name, is_last_tag) | ("text", ids) | ("data", ids, domain, tokens_cut)."""
        last_tag = max((i for i, p in enumerate(parts) if p.kind == "tag"), default=None)
        pieces, first = [], True
        for i, part in enumerate(parts):
            if part.kind == "tag":
                pieces.append(("tag", part.value, i == last_tag))
                first = False
                continue
            ids = self._tokens(part, first=first)
            first = first and not ids
            if part.kind == "data" and part.domain:
                pieces.append(("data", ids, part.domain, 0))
            else:
                pieces.append(("text", ids))
        return pieces

    def _limit_span(self, piece: tuple, max_span: int, mode: str) -> list[tuple]:
        if piece[0] != "data" or len(piece[1]) <= max_span:
            return [piece]
        _, ids, domain, cut = piece
        if mode == "truncate":
            return [("data", ids[:max_span], domain, cut + len(ids) - max_span)]
        out = [("data", ids[:max_span], domain, 0)]
        for s in range(max_span, len(ids), max_span):
            out += [("window", domain), ("data", ids[s : s + max_span], domain, 0)]
        return out

    def _assemble(self, pieces: list[tuple]) -> EncodedExample:
        ex = EncodedExample()
        segment = 0
        self._extend(ex, self.prefix, segment)
        for piece in pieces:
            if piece[0] in {"tag", "window"}:
                segment += 1
                name = piece[1]
                spec = self.specs[name]
                start = len(ex.ids)
                ex.ids.extend([self.placeholder] * spec.length)
                ex.tag_slots.extend(range(self.offsets[name], self.offsets[name] + spec.length))
                ex.segments.extend([segment] * spec.length)
                if piece[0] == "window":
                    ex.windows += 1
                elif piece[2] and spec.kind == "function":
                    ex.function_tag = name
                    ex.readout = start + spec.length - 1
                    if spec.head is None:
                        ex.target_start = len(ex.ids)
            else:
                self._extend(ex, piece[1], segment)
                if piece[0] == "data":
                    ex.truncated += piece[3]
        if 0 <= ex.target_start < len(ex.ids) and self.eos_id is not None:
            self._extend(ex, [self.eos_id], segment)  # a target ends: what teaches generation to stop
        self._extend(ex, self.suffix, segment)
        return ex

    def _extend(self, ex: EncodedExample, ids: list[int], segment: int) -> None:
        ex.ids.extend(ids)
        ex.tag_slots.extend([-1] * len(ids))
        ex.segments.extend([segment] * len(ids))

    def _tokens(self, part: Part, first: bool) -> list[int]:
        spec = self.specs.get(part.domain) if part.domain else None
        if part.kind == "data":
            key = (part.domain, part.value, first, bool(spec and spec.char_level))
            if key in self._span_cache:
                self._span_cache.move_to_end(key)
                return list(self._span_cache[key])
            ids = self._uncached_tokens(part, first, spec)
            self._span_cache[key] = tuple(ids)
            if len(self._span_cache) > SPAN_CACHE_ITEMS:
                self._span_cache.popitem(last=False)
            return ids
        return self._uncached_tokens(part, first, spec)

    def _uncached_tokens(self, part: Part, first: bool, spec) -> list[int]:
        if part.kind == "data" and spec is not None and spec.char_level:
            return [t for ch in part.value.strip() for t in self._char(ch)]
        text = part.value.strip()
        if not text:
            return []
        if self._space_joins and not first and part.value[:1].isspace():
            text = " " + text  # byte-level BPE marks word starts with the space itself
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _char(self, ch: str) -> list[int]:
        if ch not in self._char_cache:
            self._char_cache[ch] = self.tokenizer(ch, add_special_tokens=False)["input_ids"]
        return self._char_cache[ch]


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The specials the tokenizer wraps text in ([CLS] .. [SEP], <s> ..), found by tokenising a probe."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def _space_joins_token(tokenizer) -> bool:
    """True for GPT-2-style tokenizers, where " a" is one token different from "a"."""
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    sa = tokenizer(" a", add_special_tokens=False)["input_ids"]
    return len(a) == len(sa) == 1 and a != sa
