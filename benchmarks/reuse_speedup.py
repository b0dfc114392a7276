"""Epoch time of tag training with and without span key/value reuse: full isolated forward vs reuse.

Both paths train the same function tag and head from the same start, with the same seed, for one epoch over
the same examples, in one run; the domain tags are frozen, as in stages 2 and 3. The reused time includes
building the span store. Reported: both wall times, the equivalent tokens/s (tokens of the full inputs per
second of the path), the speed-up, and how far apart the two paths' per-step losses are.

* `--task dta` (stage 3, Davis): every training pair of the first `--proteins` proteins, so each protein
  recurs as often as in a full epoch (once per measured drug) and the reuse ratio is representative;
  `--limit N` keeps only their first N pairs (fewer reuses of each protein: a lower bound on the speed-up).
  Reused spans: the protein and drug spans (and the prompt text between them).
* `--task qed` (stage 2): the first `--limit` training molecules (default: all), each seen once; reused
  spans: the prompt prefix (shared by every example) and the SMILES spans.

    python benchmarks/reuse_speedup.py --data ../shared/data --model minilm --proteins 6
    python benchmarks/reuse_speedup.py --data ../shared/data --model minilm --task qed --limit 200
    # speed only: a random-weight Llama of hidden 2048, 16 layers, 16 heads, in bf16 on a GPU
    python benchmarks/reuse_speedup.py --data DATA --random-llama 2048,16,16 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from domainlm import io
from domainlm.engine.model import TaggedModel
from domainlm.engine.tag_training import Split, TagMethod
from domainlm.engine.template import Template
from domainlm.tagruns import prepare_tags, render_split
from domainlm.tasks import Example, TaskSpec, get_task
from domainlm.training import TrainConfig, TrainResult, fit

# dev-only helpers (tiny models, a fake OpenAI server) live beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RESULTS = Path(__file__).parent / "results"
TASK_NAMES = {"dta": "dta (Davis, stage 3)", "qed": "qed (stage 2)"}


def epoch_seconds(
    tm: TaggedModel, template: Template, split: Split, config: TrainConfig
) -> tuple[float, TagMethod, TrainResult]:
    method = TagMethod(
        tm, config, split, function_tag=template.function_tag, domain_tags=template.domain_tags
    )
    start = time.perf_counter()
    trained = fit(method, config.loop(), log=lambda _: None)
    return time.perf_counter() - start, method, trained


def load_model(args) -> TaggedModel:
    if not args.random_llama:
        return TaggedModel.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    from domainlm.backbone import DTYPES
    from tiny_models import tiny_model

    hidden, layers, heads = (int(x) for x in args.random_llama.split(","))
    model, tokenizer = tiny_model("llama", hidden=hidden, layers=layers, heads=heads)
    model.to(DTYPES[args.dtype])
    args.model = f"random-weight Llama (hidden {hidden}, {layers} layers, {heads} heads, " + (
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)"
    )
    tm = TaggedModel(model, tokenizer, name=args.model)
    return tm.to(args.device) if args.device else tm


def load_examples(args, spec: TaskSpec) -> tuple[list[Example], str, dict]:
    """The timed training examples, what they are in words, and the record's fields about them."""
    if args.task == "qed":
        data = spec.load(args.data, limit_train=args.limit, limit_eval=1)
        full = data.info["unique_split_sizes"]["train"]
        return data.train, f"the first {len(data.train)} training molecules", {"full_epoch_examples": full}
    data = spec.load(args.data)
    chosen = list(dict.fromkeys(ex.group for ex in data.train))[: args.proteins]
    pairs = [ex for ex in data.train if ex.group in chosen]
    subset = pairs[: args.limit]
    described = f"{len(subset)} of the {len(pairs)} training pairs of {len(chosen)} protein(s)"
    return subset, described, {"proteins": len(chosen), "full_epoch_examples": len(data.train)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--task", choices=sorted(TASK_NAMES), default="dta")
    ap.add_argument("--model", default="minilm")
    ap.add_argument(
        "--random-llama",
        metavar="HIDDEN,LAYERS,HEADS",
        help="instead of --model: a random-weight Llama of this shape (speed figures only)",
    )
    ap.add_argument("--proteins", type=int, default=6, help="dta: the proteins whose pairs are timed")
    ap.add_argument(
        "--limit", type=int, help="the first N examples only (qed: molecules; dta: the proteins' pairs)"
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-span-tokens", type=int, default=480, help="longer spans are cut into windows")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=str(RESULTS / "reuse_speedup"))
    args = ap.parse_args()
    command = shlex.join(["python", "benchmarks/reuse_speedup.py", *sys.argv[1:]])
    load_before = os.getloadavg()[0]

    spec = get_task(args.task)
    template = Template(spec.template)
    subset, described, counts = load_examples(args, spec)
    tm = load_model(args)
    base = dict(
        epochs=1,
        lr=1e-3,
        batch_size=args.batch_size,
        grad_accum=1,
        isolate=True,
        overflow="window",
        max_span_tokens=args.max_span_tokens,
        seed=0,
        dtype=args.dtype,
    )
    prepare_tags(tm, template, spec, subset, TrainConfig(**base))
    split = render_split(template, subset, args.task)
    start_state = {k: v.detach().clone() for k, v in tm.state_dict().items() if not k.startswith("base.")}

    # Untimed warm-up of both paths on one batch (CUDA context, kernel choice, allocator), so neither pays
    # it in its time.
    warm = render_split(template, subset[: args.batch_size], args.task)
    for reuse in (False, True):
        epoch_seconds(tm, template, warm, TrainConfig(**base, reuse=reuse))
    # After the warm-up, which set the length policy: tokens of the inputs as the model reads them.
    tokens = sum(len(tm.encoder.encode(x, i, True).ids) for i, x in enumerate(split.inputs))

    timings, losses = {}, {}
    for name, reuse in (("uncached", False), ("reused", True)):
        tm.load_state_dict(start_state, strict=False)
        if tm.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, method, trained = epoch_seconds(tm, template, split, TrainConfig(**base, reuse=reuse))
        losses[name] = [row["train_loss"] for row in trained.history]
        timings[name] = {
            "seconds": round(seconds, 2),
            "equivalent_tokens_per_s": round(tokens / seconds, 1),
            "first_loss": losses[name][0],
            "last_loss": losses[name][-1],
        }
        if tm.device.type == "cuda":
            timings[name]["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if method.cache is not None:
            timings[name]["span_cache"] = {**vars(method.cache.stats), "bytes": method.cache.bytes}
    loss_gap = max(abs(a - b) for a, b in zip(losses["uncached"], losses["reused"], strict=True))
    result = {
        "command": command,
        "task": TASK_NAMES[args.task],
        "model": args.model,
        "device": str(tm.device) + (f" ({torch.cuda.get_device_name()})" if tm.device.type == "cuda" else ""),
        "dtype": args.dtype,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "examples": len(subset),
        **counts,
        "tokens_per_epoch": tokens,
        "batch_size": args.batch_size,
        "max_span_tokens": args.max_span_tokens,
        "steps": len(losses["reused"]),
        **timings,
        "reuse_speedup": round(timings["uncached"]["seconds"] / timings["reused"]["seconds"], 2),
        "max_abs_loss_difference": loss_gap,
    }
    out = Path(args.out)
    io.write_json(out.with_suffix(".json"), result)
    io.write_text(
        out.with_suffix(".md"),
        (
            f"# Span reuse speed-up ({result['task']}, {args.model}, {result['device']})\n\n"
            f"One epoch over {described} ({tokens:,} tokens, {result['steps']} steps), batch "
            f"{args.batch_size}, spans over {args.max_span_tokens} tokens cut into windows, measured in one "
            f"run; torch threads {result['torch_threads']} on {result['cpu_count']} CPUs, 1-min load average "
            f"{result['load_average_before_after'][0]} -> {result['load_average_before_after'][1]}.\n\n"
            f"    {command}\n\n"
            "| path | seconds | equivalent tokens/s | first-batch loss | last-batch loss |\n"
            "|---|---|---|---|---|\n"
            + "".join(
                f"| {k} | {v['seconds']} | {v['equivalent_tokens_per_s']:,.0f} | {v['first_loss']:.4f} | "
                f"{v['last_loss']:.4f} |\n"
                for k, v in timings.items()
            )
            + f"\n**reuse_speedup = {result['reuse_speedup']}x** (uncached / reused; reused includes "
            "building the span store). Per-step losses of the two paths differ by at most "
            f"{loss_gap:.2e} over the {result['steps']} steps.\n"
        ),
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
