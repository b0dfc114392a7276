"""Epoch time of cross-domain tag training on Davis (dta): full isolated forward vs span key/value reuse.

Both paths train the same <BA> tag and head for one epoch over the same pairs, in one run. The pairs are
every training pair of the first `--proteins` proteins, so each protein recurs as often as in a full
epoch (once per measured drug) and the reuse ratio is representative. The reused time includes
building the span store. Also checks both paths give the same loss on the first batch.

    python benchmarks/reuse_speedup.py --data ../shared/data --model minilm --proteins 6
    # speed only: a random-weight Llama of hidden 2048, 16 layers, 16 heads, in bf16 on a GPU
    python benchmarks/reuse_speedup.py --data DATA --random-llama 2048,16,16 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from domainlm import io
from domainlm.engine.model import TaggedModel
from domainlm.engine.tag_training import TagMethod
from domainlm.engine.template import Template
from domainlm.tagruns import prepare_tags, render_split
from domainlm.tasks import get_task
from domainlm.training import TrainConfig, TrainResult, fit

# dev-only helpers (tiny models, a fake OpenAI server) live beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

RESULTS = Path(__file__).parent / "results"


def epoch_seconds(tm: TaggedModel, split, config: TrainConfig) -> tuple[float, TagMethod, TrainResult]:
    template = Template(get_task("dta").template)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="minilm")
    ap.add_argument(
        "--random-llama",
        metavar="HIDDEN,LAYERS,HEADS",
        help="instead of --model: a random-weight Llama of this shape (speed figures only)",
    )
    ap.add_argument("--proteins", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-span-tokens", type=int, default=480)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=str(RESULTS / "reuse_speedup"))
    args = ap.parse_args()

    spec = get_task("dta")
    data = spec.load(args.data)
    chosen = list(dict.fromkeys(ex.group for ex in data.train))[: args.proteins]
    subset = [ex for ex in data.train if ex.group in chosen]
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
    prepare_tags(tm, Template(spec.template), spec, subset, TrainConfig(**base))
    split = render_split(Template(spec.template), subset, "dta")
    start_state = {k: v.detach().clone() for k, v in tm.state_dict().items() if not k.startswith("base.")}

    # Untimed warm-up of both paths (CUDA context, kernel choice, allocator), so neither pays it in its time.
    warm = render_split(Template(spec.template), subset[: 2 * args.batch_size], "dta")
    for reuse in (False, True):
        epoch_seconds(tm, warm, TrainConfig(**base, reuse=reuse))

    timings = {}
    for name, reuse in (("uncached", False), ("reused", True)):
        tm.load_state_dict(start_state, strict=False)
        if tm.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, method, trained = epoch_seconds(tm, split, TrainConfig(**base, reuse=reuse))
        timings[name] = {
            "seconds": round(seconds, 2),
            "first_loss": trained.history[0]["train_loss"],
            "last_loss": trained.history[-1]["train_loss"],
        }
        if tm.device.type == "cuda":
            timings[name]["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if method.cache is not None:
            timings[name]["span_cache"] = {**vars(method.cache.stats), "bytes": method.cache.bytes}
    tokens = sum(len(tm.encoder.encode(x, i, True).ids) for i, x in enumerate(split.inputs))
    result = {
        "task": "dta (Davis)",
        "model": args.model,
        "device": str(tm.device) + (f" ({torch.cuda.get_device_name()})" if tm.device.type == "cuda" else ""),
        "dtype": args.dtype,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "pairs": len(subset),
        "proteins": len(chosen),
        "tokens_per_epoch": tokens,
        "full_epoch_pairs": len(data.train),
        "batch_size": args.batch_size,
        **timings,
        "reuse_speedup": round(timings["uncached"]["seconds"] / timings["reused"]["seconds"], 2),
    }
    out = Path(args.out)
    io.write_json(out.with_suffix(".json"), result)
    io.write_text(
        out.with_suffix(".md"),
        (
            f"# Span reuse speed-up (dta, {args.model}, {result['device']})\n\n"
            f"One epoch over the {len(subset)} training pairs of {len(chosen)} proteins "
            f"({tokens:,} tokens), batch {args.batch_size}, measured in one run.\n\n"
            "| path | seconds | first-batch loss | last-batch loss |\n|---|---|---|---|\n"
            + "".join(
                f"| {k} | {v['seconds']} | {v['first_loss']:.4f} | {v['last_loss']:.4f} |\n"
                for k, v in timings.items()
            )
            + f"\n**reuse_speedup = {result['reuse_speedup']}x** (uncached / reused; reused includes "
            "building the span store)\n"
        ),
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
