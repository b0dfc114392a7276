"""A LoRA training step (forward + backward) of a causal LM on prompt + short target, with the loss on full
logits (transformers' own, `model(..., labels=...).loss`) against the target-only loss domainlm uses
(`domainlm.target_loss`: the output layer only where a target is predicted). Same batches, rounds
alternating so that machine load hits both alike; the losses are compared too.

    python benchmarks/target_loss_speed.py --model gemma3-270m --out benchmarks/results/gemma3-270m
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model

from domainlm import backbone, io
from domainlm.batching import pad_batch
from domainlm.target_loss import target_loss


def batches(vocab: int, n: int, size: int, prompt: int, target: int, pad_id: int) -> list[dict]:
    """Random token batches: prompts of prompt/2..prompt tokens, then `target` target tokens, right padded."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        features = []
        for _ in range(size):
            p = int(torch.randint(prompt // 2, prompt + 1, (1,), generator=g))
            ids = torch.randint(10, vocab, (p + target,), generator=g).tolist()
            features.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
        out.append(pad_batch(features, pad_id))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True, help="folder for target_loss_speed.json / .md")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="longest prompt (shortest: half)")
    ap.add_argument("--target-tokens", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = backbone.load(args.model, "generation")
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=8, target_modules=backbone.lora_targets(loaded.config, None)
    )
    model = get_peft_model(loaded.model, lora)
    model.train()
    pad_id = loaded.tokenizer.pad_token_id or 0
    data = batches(loaded.config.vocab_size, args.batches, args.batch_size, args.prompt_tokens,
                   args.target_tokens, pad_id)  # fmt: skip

    def full(b):
        return model(**b).loss

    def targets_only(b):
        return target_loss(model, b["input_ids"], b["attention_mask"], b["labels"])

    methods = {"full_logits": full, "target_only": targets_only}
    losses = {name: [] for name in methods}
    with torch.no_grad():
        model.eval()  # dropout off, so the two losses can be compared exactly
        for name, fn in methods.items():
            losses[name] = [round(float(fn(b)), 5) for b in data]
        model.train()
    timings = {name: [] for name in methods}
    for fn in methods.values():  # warm-up
        fn(data[0]).backward()
        model.zero_grad(set_to_none=True)
    for _ in range(args.rounds):
        for name, fn in methods.items():
            started, tokens = time.perf_counter(), 0
            for b in data:
                fn(b).backward()
                model.zero_grad(set_to_none=True)
                tokens += int(b["attention_mask"].sum())
            timings[name].append(tokens / (time.perf_counter() - started))
    speed = {name: round(statistics.median(v), 1) for name, v in timings.items()}
    record = {
        "command": shlex.join(["python", "benchmarks/target_loss_speed.py", *sys.argv[1:]]),
        "model": args.model,
        "vocab_size": loaded.config.vocab_size,
        "batch": f"{args.batch_size} x ({args.prompt_tokens // 2}-{args.prompt_tokens} prompt + "
        f"{args.target_tokens} target) tokens, {args.batches} batches, {args.rounds} rounds",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "tokens_per_s": speed,
        "tokens_per_s_rounds": {k: [round(x, 1) for x in v] for k, v in timings.items()},
        "speedup": round(speed["target_only"] / speed["full_logits"], 2),
        "losses": losses,
    }
    out = Path(args.out)
    io.write_json(out / "target_loss_speed.json", record)
    lines = [
        f"# LoRA step on {args.model}: loss on full logits vs on target tokens only",
        "",
        f"    {record['command']}",
        "",
        f"Batches: {record['batch']}; vocabulary {record['vocab_size']:,}; torch threads "
        f"{record['torch_threads']} of {record['cpu_count']} CPUs. Tokens/s = real (unpadded) positions, "
        "forward + backward, median of rounds.",
        "",
        "| loss | tokens/s | losses per batch |",
        "|---|---:|---|",
        *[f"| {k} | {speed[k]:.1f} | {losses[k]} |" for k in methods],
        "",
        f"Target-only over full logits: {record['speedup']:.2f}x.",
    ]
    io.write_text(out / "target_loss_speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
