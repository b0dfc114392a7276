"""A local Hugging Face causal LM answering chat messages: the in-process teacher and what `serve` serves."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRANSFORMERS_TOP_K = 50  # what generate() samples with when a model's generation config names no top_k


class PromptTooLong(ValueError):
    """The prompt leaves no room to generate within the model's context length."""


@dataclass
class Generation:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reasons: list[str]


@dataclass
class Prompt:
    encoded: Any  # the tokenizer's BatchEncoding, on the CPU
    length: int  # prompt tokens
    max_tokens: int  # completion tokens it may take
    stop: tuple[str, ...] = ()  # the completion ends before the first of these it writes (OpenAI's `stop`)


class LocalChatModel:
    """Chat over `transformers.generate`: the tokenizer's chat template when it has one, else "role: content"
    lines ending in "assistant:". One generation runs at a time (the model is not re-entrant)."""

    def __init__(self, path: str | Path, device: str | None = None):
        """`path`: any model name the backbone resolves (a directory, `smollm2-135m`, a .gguf file, ...)."""
        from domainlm import backbone

        local = Path(path).expanduser()
        self.name = str(local.resolve()) if local.exists() else str(path)
        self.device = backbone.pick_device(device)
        loaded = backbone.load(str(path), "generation")
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model.to(self.device).eval()
        self.context_length = backbone.declared_positions(self.model.config)
        self._lock = threading.Lock()

    def render(self, messages: list[dict]) -> tuple[str, bool]:
        """(prompt text, whether it already carries special tokens)."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            ), True
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"]), False

    def encode(
        self, messages: list[dict], max_tokens: int, fit_context: bool = True, stop: tuple[str, ...] = ()
    ) -> Prompt:
        """The tokenised chat prompt and the completion tokens it may take. `fit_context`: cut `max_tokens`
        to the room the context leaves after the prompt; without it a `max_tokens` beyond that room raises
        PromptTooLong (what an API answers when a client asks for it)."""
        text, templated = self.render(messages)
        return self._encode(text, templated, max_tokens, fit_context, stop)

    def encode_text(
        self, text: str, max_tokens: int, fit_context: bool = True, stop: tuple[str, ...] = ()
    ) -> Prompt:
        """A raw prompt to continue, without a chat template (the completions API: few-shot prompts)."""
        return self._encode(text, False, max_tokens, fit_context, stop)

    def _encode(self, text: str, templated: bool, max_tokens: int, fit_context: bool, stop) -> Prompt:
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
        length = encoded["input_ids"].shape[1]
        context = self.context_length
        if context is not None:
            if length >= context:
                raise PromptTooLong(f"the prompt has {length} tokens; the model's context is {context}")
            room = context - length
            if max_tokens > room and not fit_context:
                raise PromptTooLong(
                    f"the model's context is {context} tokens: the prompt has {length}, leaving {room} "
                    f"for the completion, but max_tokens asks for {max_tokens}"
                )
            max_tokens = min(max_tokens, room)
        return Prompt(encoded, length, max_tokens, tuple(s for s in stop if s))

    def generate(self, messages: list[dict], *, max_tokens: int = 256, **sampling) -> Generation:
        return self.generate_encoded(self.encode(messages, max_tokens), **sampling)

    def generate_encoded(
        self,
        prompt: Prompt,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> Generation:
        return self.generate_batch([prompt], n=[n], temperature=temperature, top_p=top_p, seed=seed)[0]

    def generate_batch(
        self,
        prompts: list[Prompt],
        *,
        n: list[int] | None = None,
        temperature: float | list[float] = 1.0,
        top_p: float | list[float] = 1.0,
        seed: int | None | list[int | None] = None,
    ) -> list[Generation]:
        """One `generate` call for several prompts (left-padded), `n[i]` completions for prompt i, each cut
        at its own `max_tokens`. `temperature`, `top_p` and `seed` are one value for all prompts or one per
        prompt. Greedy rows (temperature 0) equal what each prompt gives alone; a sampled prompt draws from
        its own generator, seeded by its seed: its answers do not depend on which prompts share the batch."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        count = len(prompts)
        n = n or [1] * count
        temperature, top_p, seed = (_per_prompt(v, count) for v in (temperature, top_p, seed))
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        # Greedy decoding gives one answer per prompt (copied n times); sampling needs a row per completion.
        taken = [k if t > 0 else 1 for k, t in zip(n, temperature, strict=True)]
        owner = [i for i, k in enumerate(taken) for _ in range(k)]  # each row's prompt
        rows = [prompts[i] for i in owner]
        width = max(p.length for p in rows)
        ids = [[pad] * (width - p.length) + p.encoded["input_ids"][0].tolist() for p in rows]
        mask = [[0] * (width - p.length) + [1] * p.length for p in rows]
        longest = max(p.max_tokens for p in rows)
        processors = LogitsProcessorList()
        if any(t > 0 for t in temperature):
            generators = [_generator(s, self.device) if t > 0 else None for s, t in zip(seed, temperature)]
            # top-k is not in the OpenAI API: the model's generation config, else transformers' default
            top_k = getattr(self.model.generation_config, "top_k", None)
            top_k = TRANSFORMERS_TOP_K if top_k is None else top_k
            processors.append(
                RowSampler(
                    [temperature[i] for i in owner],
                    [top_p[i] for i in owner],
                    [generators[i] for i in owner],
                    top_k=top_k,
                )
            )
        stops = RowStops([p.stop for p in rows], self.tokenizer, width)
        with self._lock, torch.no_grad():
            output = self.model.generate(
                input_ids=torch.tensor(ids, device=self.device),
                attention_mask=torch.tensor(mask, device=self.device),
                do_sample=False,  # RowSampler has drawn each sampled row's token; greedy then takes it
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stops] if stops.active else []),
                max_new_tokens=longest,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        new = [(tokens, at) for tokens, at in zip(output[:, width:].tolist(), stops.at, strict=True)]
        results, row = [], 0
        for prompt, k, m in zip(prompts, n, taken, strict=True):
            mine = new[row : row + m]
            row += m
            results.append(self._decode(prompt, mine if m == k else mine * k, eos))
        return results

    def _decode(
        self, prompt: Prompt, rows: list[tuple[list[int], int | None]], eos: int | None
    ) -> Generation:
        """Each row cut at the prompt's own `max_tokens`, at the first end-of-sequence token, and before the
        first stop string it wrote (`at`: the tokens it had made when it wrote one)."""
        texts, finish, completion_tokens = [], [], 0
        for tokens, at in rows:
            tokens = tokens[: prompt.max_tokens if at is None else min(at, prompt.max_tokens)]
            length = tokens.index(eos) if eos is not None and eos in tokens else len(tokens)
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in prompt.stop) if i >= 0), default=None)
            stopped = cut is not None or length < prompt.max_tokens
            completion_tokens += length
            finish.append("stop" if stopped else "length")
            texts.append(text[:cut].strip())
        return Generation(texts, prompt.length, completion_tokens, finish)


def _per_prompt(value, count: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def _generator(seed: int | None, device):
    import torch

    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # a fresh, unrepeatable stream, as an unseeded API request asks for
    else:
        generator.manual_seed(seed)
    return generator


class RowSampler:
    """A logits processor that samples each row's next token with the row's own temperature, top-p and
    random generator (and a top-k shared by all rows, 0 for none), through transformers' own warpers in
    their order (temperature, top-k, top-p), and leaves that token as the row's only finite logit (rows with
    temperature 0 keep their logits: greedy). Transformers' own sampling draws every row from one random
    stream, so a seeded answer would change with the requests batched beside it."""

    def __init__(self, temperatures: list[float], top_ps: list[float], generators: list, top_k: int = 0):
        from transformers import TopKLogitsWarper, TopPLogitsWarper

        self.temperatures, self.generators = temperatures, generators
        self.top_k = TopKLogitsWarper(top_k) if top_k > 0 else None
        self.top_p = [TopPLogitsWarper(p) if p < 1 else None for p in top_ps]

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.clone()
        for row, (t, top_p, generator) in enumerate(zip(self.temperatures, self.top_p, self.generators)):
            if t <= 0:
                continue
            logits = scores[row : row + 1].float() / t
            for warp in (self.top_k, top_p):
                if warp is not None:
                    logits = warp(input_ids, logits)
            token = torch.multinomial(logits.softmax(-1)[0], 1, generator=generator)
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


class RowStops:
    """A stopping criterion that ends each row once its completion contains one of the row's own stop
    strings (transformers' StopStringCriteria shares one list across the batch). Checked on the decoded
    text, so a stop string split across tokens is still seen. `at[row]`: completion tokens when it stopped.

    Checked after every token, so a stop can only have ended in the newest one: decoding a tail of the
    completion (a token per byte of the stop, as a byte-level tokenizer may spend one on each byte of a
    character, and some slack) sees it, at a cost that does not grow with the completion."""

    SLACK = 8  # tokens that decode to no character (special, split bytes) before a stop

    def __init__(self, stops: list[tuple[str, ...]], tokenizer, start: int):
        self.stops, self.tokenizer, self.start = stops, tokenizer, start
        self.at: list[int | None] = [None] * len(stops)
        self.active = any(stops)
        self.tail = max((len(s.encode("utf-8")) for row in stops for s in row), default=0) + self.SLACK

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        made = input_ids.shape[1] - self.start
        first = max(self.start, input_ids.shape[1] - self.tail)
        for row, stops in enumerate(self.stops):
            if stops and self.at[row] is None:
                text = self.tokenizer.decode(input_ids[row, first:], skip_special_tokens=True)
                if any(s in text for s in stops):
                    self.at[row] = made
        return torch.tensor([at is not None for at in self.at], device=input_ids.device)
