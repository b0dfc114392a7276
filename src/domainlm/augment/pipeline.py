"""The augmentation run: build one request per (training item, mode, sample), fetch the replies concurrently
through the cache, then validate them in a fixed order and write a training set.

Fetching and judging are separate on purpose: replies arrive in any order, but duplicates are decided in
item order after all replies are in, so an interrupted and resumed run writes the same files as one that
ran straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from domainlm import io
from domainlm.augment.pricing import estimate_cost, price_for
from domainlm.augment.prompts import STYLES, PromptTemplate, load_template
from domainlm.augment.replies import REASONS, Filters, NearDuplicates, judge_reply
from domainlm.augment.reply_cache import Reply, ReplyCache, request_key
from domainlm.augment.teachers import MalformedReply, RequestFailed, RetryableError, Teacher
from domainlm.errors import InputError
from domainlm.qa.data import LABELS, QAItem, QASplits, write_qa_jsonl

MODES = {"rewrite": ("rewrite",), "new": ("new",), "combined": ("rewrite", "new")}
MAX_BACKOFF_S = 60.0


@dataclass
class AugmentConfig:
    """What to generate and how to talk to the teacher."""

    mode: str  # rewrite | new | combined
    model: str  # the teacher's model name, sent with every request
    n: int = 1  # samples per training item and mode
    limit: int | None = None  # augment only the first `limit` training items (all originals are still kept)
    concurrency: int = 8  # requests in flight at once
    rpm: float | None = None  # requests per minute, None for no limit
    temperature: float = 0.7
    max_tokens: int = 512
    seed: int = 0  # sample k of every item is requested with seed + k
    max_retries: int = 5  # per request, on 429 / 5xx / timeouts / dropped connections
    backoff: float = 1.0  # seconds before the first retry; doubles each time, with jitter
    include_originals: bool = True  # train.jsonl starts with the original training items
    prompt_dir: str | None = None  # directory of <mode>.txt templates overriding the packaged ones
    prompt_style: str = "chat"  # packaged templates: chat (instruction models) or fewshot (base models)
    price_in: float | None = None  # USD per million prompt tokens, overriding the price table
    price_out: float | None = None  # USD per million completion tokens
    near_duplicate: float = 0.8  # word-set Jaccard at which a question is a near duplicate (1.0: exact only)
    max_question_words: int = 64  # longer generated questions are dropped as too_long
    max_answer_words: int = 256  # likewise for answers
    min_grounding: float = 0.4  # share of a question's content words found in its source item (0: off)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; choose from {list(MODES)}")
        if self.prompt_style not in STYLES:
            raise InputError(f"unknown prompt style {self.prompt_style!r}; choose from {list(STYLES)}")
        checks = {
            "n": self.n >= 1,
            "concurrency": self.concurrency >= 1,
            "max_retries": self.max_retries >= 0,
            "max_tokens": self.max_tokens >= 1,
            "temperature": self.temperature >= 0,
            "backoff": self.backoff >= 0,
            "limit": self.limit is None or self.limit >= 1,
            "rpm": self.rpm is None or self.rpm > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InputError(f"invalid value for {bad}: {[getattr(self, b) for b in bad]}")
        if (self.price_in is None) != (self.price_out is None):
            raise InputError("give both --price-in and --price-out, or neither")
        _ = self.filters  # refuses bad thresholds now, not at the end of the run

    @property
    def filters(self) -> Filters:
        return Filters(
            self.near_duplicate, self.max_question_words, self.max_answer_words, self.min_grounding
        )

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES[self.mode]


@dataclass
class Job:
    parent: QAItem
    mode: str
    sample: int
    request: list[dict] | str  # chat messages, or a completion prompt
    seed: int
    key: str
    template_sha256: str
    stop: tuple[str, ...] = ()

    @property
    def prompt_sha256(self) -> str:
        """The rendered prompt's hash: which exact messages (or prompt text) the teacher saw."""
        blob = json.dumps(self.request, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Stats:
    jobs: int = 0
    done: int = 0
    from_cache: int = 0
    requests: int = 0
    retries: int = 0
    malformed: int = 0  # HTTP 200 answers that were no usable completion (each one retried)
    rejected: int = 0  # per-reply rejects seen so far (duplicates are only known at the end)
    failed: int = 0
    usage: Counter = field(default_factory=Counter)  # all replies used, cached or not
    usage_this_run: Counter = field(default_factory=Counter)


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart."""

    def __init__(self, rpm: float | None, clock=time.monotonic, sleep=asyncio.sleep):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._clock, self._sleep = clock, sleep

    async def wait(self) -> None:
        if not self.interval:
            return
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval
        await self._sleep(start - now)


def backoff_delay(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter (half fixed, half random), at least a server's Retry-After."""
    delay = min(MAX_BACKOFF_S, base * 2**attempt)
    delay = delay / 2 + random.uniform(0, delay / 2)
    return max(delay, min(retry_after or 0.0, MAX_BACKOFF_S))


def build_jobs(
    items: list[QAItem], templates: dict[str, PromptTemplate], teacher: str, config: AugmentConfig
):
    jobs = []
    for item in items:
        for mode in config.modes:
            template = templates[mode]
            request, stop = template.render(item), template.stop
            for sample in range(config.n):
                seed = config.seed + sample
                params = {"temperature": config.temperature, "max_tokens": config.max_tokens, "seed": seed}
                if stop:  # only then: keys of requests without stop sequences stay as they were
                    params["stop"] = list(stop)
                key = request_key(teacher, config.model, request, params, sample)
                jobs.append(Job(item, mode, sample, request, seed, key, template.sha256, stop))
    return jobs


class Fetcher:
    """Gets every job's reply: from the cache, or from the teacher (bounded concurrency, rate limit, retries),
    storing each new reply the moment it arrives."""

    def __init__(
        self, teacher: Teacher, cache: ReplyCache, config: AugmentConfig, stats: Stats, on_update=None
    ):
        self.teacher, self.cache, self.config, self.stats = teacher, cache, config, stats
        self.on_update = on_update or (lambda: None)
        self.limiter = RateLimiter(config.rpm)
        self.results: dict[str, Reply | RequestFailed] = {}

    async def run(self, jobs: list[Job]) -> dict[str, Reply | RequestFailed]:
        semaphore = asyncio.Semaphore(self.config.concurrency)
        try:
            # The first request goes alone: a teacher that cannot be reached fails the run at once, and a
            # burst of connections never hits a server before it has answered anything.
            probe = next((job for job in jobs if self.cache.get(job.key) is None), None)
            if probe is not None:
                await self._one(probe, semaphore)
            tasks = [asyncio.ensure_future(self._one(job, semaphore)) for job in jobs if job is not probe]
            if tasks:
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for task in done:
                    task.result()  # re-raise the first fatal error
        finally:
            await self.teacher.close()
        return self.results

    async def _one(self, job: Job, semaphore: asyncio.Semaphore) -> None:
        reply = self.cache.get(job.key)
        if reply is not None:
            self.stats.from_cache += 1
        else:
            async with semaphore:
                try:
                    reply = await self._ask(job)
                except RequestFailed as e:
                    self.results[job.key] = e
                    self.stats.failed += 1
                    self._finish()
                    return
            self.cache.put(job.key, reply, item_id=job.parent.id, mode=job.mode, sample=job.sample)
            self.stats.usage_this_run.update(prompt=reply.prompt_tokens, completion=reply.completion_tokens)
        self.results[job.key] = reply
        self.stats.usage.update(prompt=reply.prompt_tokens, completion=reply.completion_tokens)
        if judge_reply(reply.text, job.parent, job.mode, job.sample, self.config.filters).reason:
            self.stats.rejected += 1
        self._finish()

    def _finish(self) -> None:
        self.stats.done += 1
        self.on_update()

    async def _ask(self, job: Job) -> Reply:
        for attempt in range(self.config.max_retries + 1):
            await self.limiter.wait()
            self.stats.requests += 1
            try:
                return await self.teacher.complete(
                    job.request,
                    model=self.config.model,
                    temperature=self.config.temperature,
                    max_tokens=self.config.max_tokens,
                    seed=job.seed,
                    stop=job.stop,
                )
            except RetryableError as e:
                if isinstance(e, MalformedReply):
                    self.stats.malformed += 1
                if attempt == self.config.max_retries:
                    if isinstance(e, MalformedReply) and e.fallback is not None:
                        return e.fallback  # an answer that stays empty is the teacher's answer

                    raise RequestFailed(f"gave up after {attempt + 1} attempts: {e}") from None
                self.stats.retries += 1
                self.on_update()
                await asyncio.sleep(backoff_delay(attempt, self.config.backoff, e.retry_after))
        raise AssertionError("unreachable")


def judge_all(
    jobs: list[Job], results: dict, originals: list[QAItem], config: AugmentConfig, teacher: str
) -> tuple[list[QAItem], list[dict]]:
    """Accepted items and reject rows, decided in job order: a question equal or near to an original or to
    an earlier accepted item is a (near) duplicate. Accepted items carry their provenance."""
    seen = NearDuplicates(config.near_duplicate)
    for item in originals:
        seen.add(item.question, item.id)
    accepted, rejects = [], []
    for job in jobs:
        result = results.get(job.key)
        base = {"key": job.key, "parent_id": job.parent.id, "mode": job.mode, "sample": job.sample}
        if isinstance(result, RequestFailed):
            rejects.append({**base, "reason": "request_failed", "detail": str(result), "reply": None})
            continue
        verdict = judge_reply(result.text, job.parent, job.mode, job.sample, config.filters)
        if verdict.item is not None:
            match = seen.match(verdict.item.question)
            if match is None:
                seen.add(verdict.item.question, verdict.item.id)
                verdict.item.provenance = provenance(job, config, teacher)
                accepted.append(verdict.item)
                continue
            reason, first, similarity = match
            verdict.reason = reason
            verdict.detail = (
                f"same question as {first}"
                if reason == "duplicate"
                else (f"near the question of {first} (word Jaccard {similarity:.2f})")
            )
        rejects.append({**base, "reason": verdict.reason, "detail": verdict.detail, "reply": result.text})
    return accepted, rejects


def provenance(job: Job, config: AugmentConfig, teacher: str) -> dict:
    """Where a generated item came from, stored with it in train.jsonl."""
    return {
        "source_id": job.parent.id,
        "mode": job.mode,
        "sample": job.sample,
        "teacher": teacher,
        "model": config.model,
        "prompt_sha256": job.prompt_sha256,
        "template_sha256": job.template_sha256,
        "request_key": job.key,
    }


def run_augment(
    splits: QASplits,
    teacher: Teacher,
    config: AugmentConfig,
    out_dir: str | Path,
    *,
    cache_path: str | Path | None = None,
    data_info: dict | None = None,
    show_progress: bool = True,
) -> dict:
    """Generate, validate and write `out_dir` (train/dev/test/rejects JSONL, manifest.json).

    Returns the manifest."""
    started = time.time()
    out_dir = Path(out_dir)
    templates = {mode: load_template(mode, config.prompt_dir, config.prompt_style) for mode in config.modes}
    cache = ReplyCache(cache_path or out_dir / "cache.sqlite")
    try:
        for template in templates.values():
            cache.check_template(template.mode, template.sha256, template.path)
        targets = splits.train[: config.limit] if config.limit else splits.train
        jobs = build_jobs(targets, templates, teacher.name, config)
        stats = Stats(jobs=len(jobs))
        with _progress(stats, show_progress) as update:
            results = asyncio.run(Fetcher(teacher, cache, config, stats, update).run(jobs))
    finally:
        cache.close()

    originals = splits.train if config.include_originals else []
    accepted, rejects = judge_all(jobs, results, splits.train, config, teacher.name)
    write_qa_jsonl(out_dir / "train.jsonl", [*originals, *accepted])
    write_qa_jsonl(out_dir / "dev.jsonl", splits.dev)
    write_qa_jsonl(out_dir / "test.jsonl", splits.test)
    io.write_jsonl(out_dir / "rejects.jsonl", rejects)
    manifest = _manifest(config, teacher, templates, stats, accepted, rejects, originals, data_info, started)
    io.write_json(out_dir / "manifest.json", manifest)
    return manifest


def _manifest(config, teacher, templates, stats, accepted, rejects, originals, data_info, started) -> dict:
    local = teacher.name.startswith("hf:")
    price = (0.0, 0.0) if local else price_for(config.model, (config.price_in, config.price_out))
    usage = {"prompt_tokens": stats.usage["prompt"], "completion_tokens": stats.usage["completion"]}
    this_run = {
        "prompt_tokens": stats.usage_this_run["prompt"],
        "completion_tokens": stats.usage_this_run["completion"],
    }
    by_reason = Counter(r["reason"] for r in rejects)
    return {
        "status": "incomplete" if stats.failed else "complete",
        "mode": config.mode,
        "teacher": teacher.name,
        "model": config.model,
        "params": {k: v for k, v in asdict(config).items() if k not in {"mode", "model"}},
        "templates": {m: {"path": t.path, "sha256": t.sha256, "text": t.text} for m, t in templates.items()},
        "data": data_info or {},
        "counts": {
            "train_originals": len(originals),
            "generated": dict(Counter(item.source for item in accepted)),
            # a teacher may keep the labels but not their balance, and a student learns the balance it sees
            "labels": {
                "original": label_counts(originals),
                **{mode: label_counts([i for i in accepted if i.source == mode]) for mode in config.modes},
            },
            "train_total": len(originals) + len(accepted),
            "requests_planned": stats.jobs,
            "replies_from_cache": stats.from_cache,
            "requests_sent": stats.requests,
            "retries": stats.retries,
            "malformed_replies": stats.malformed,
            "failed_requests": stats.failed,
            "rejected": len(rejects),
        },
        "rejects_by_reason": {reason: by_reason.get(reason, 0) for reason in REASONS},
        "usage": usage,
        "usage_this_run": this_run,
        "cost": {
            "usd_per_million_tokens": list(price) if price else None,
            "estimated_usd": estimate_cost(usage["prompt_tokens"], usage["completion_tokens"], price),
            "estimated_usd_this_run": estimate_cost(
                this_run["prompt_tokens"], this_run["completion_tokens"], price
            ),
            "note": None
            if price
            else f"no price known for {config.model!r}; pass --price-in and --price-out",
        },
        "wall_seconds": round(time.time() - started, 3),
    }


def label_counts(items) -> dict[str, int]:
    """{"yes": n, "no": n, "maybe": n}, every label present."""
    counts = Counter(item.label for item in items)
    return {label: counts.get(label, 0) for label in LABELS}


@contextlib.contextmanager
def _progress(stats: Stats, enabled: bool):
    """A rich progress bar on stderr (replies done, rejects, retries and tokens); yields its update."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("augment"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    task = progress.add_task("augment", total=stats.jobs, info="")

    def update() -> None:
        s = stats
        tokens = s.usage["prompt"] + s.usage["completion"]
        info = (
            f"rejects {s.rejected + s.failed}  retries {s.retries} (malformed {s.malformed})  "
            f"tokens {tokens:,}  cached {s.from_cache}"
        )
        progress.update(task, completed=s.done, info=info)

    with progress:
        try:
            yield update
        finally:
            update()
