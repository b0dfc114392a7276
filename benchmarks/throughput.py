"""Training throughput (forward + backward) of tag training vs peft prompt tuning on the same backbone and
the same batches, measured in one run.

Both train what `domainlm bench` trains: tags = the <SMILES> domain tag + the <QED> function tag and its
head (trained jointly, as on an encoder); prompt tuning = 20 virtual tokens (2 tags x 10) + the same head.
The methods alternate round by round over identical batches, so a change in machine load hits both alike.
Tokens = sequence positions processed (text tokens + tag / virtual-token positions, padding excluded);
both spell SMILES one character a token, as the paper does and as `domainlm bench` feeds both.

    python benchmarks/throughput.py --data ../shared/data --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from domainlm import io
from domainlm.baselines import peft_heads as ph
from domainlm.batching import pad_ids
from domainlm.engine.model import TaggedModel
from domainlm.engine.tag_training import configure
from domainlm.engine.template import Template
from domainlm.tagruns import prepare_tags
from domainlm.tasks import get_task
from domainlm.training import TrainConfig


def tag_steps(spec, data, model: str, config: TrainConfig, batches):
    tm = TaggedModel.from_pretrained(model)
    template = Template(spec.template)
    prepare_tags(tm, template, spec, data.train, config)
    setup = configure(tm, config, template.function_tag, template.domain_tags)
    tm.train()
    encoded = [
        tm.encode([template.render(e.fields) for e in b], [e.label for e in b], isolate=setup.isolate)
        for b in batches
    ]

    def step(i: int) -> int:
        out = tm(**encoded[i])
        out.loss.backward()
        tm.zero_grad(set_to_none=True)
        return int(encoded[i]["attention_mask"].sum())

    return step, tm.num_trainable(), {"isolate": setup.isolate}


def prompt_tuning_steps(spec, data, model: str, batches, n_virtual: int):
    backbone = ph.load_backbone(model)
    settings = ph.PeftSettings(num_virtual_tokens=n_virtual)
    net = ph.build_model("prompt_tuning", backbone, ph.head_spec_for(spec, data), settings)
    net.train()
    budget = ph.text_budget(backbone, settings)
    template = Template(spec.template)
    pad = backbone.tokenizer.pad_token_id
    encoded = []
    for b in batches:
        ids, _ = ph.encode_examples(template, b, backbone.tokenizer, budget, spec.char_level_tags)
        encoded.append((pad_ids(ids, pad), torch.tensor([e.label for e in b], dtype=torch.float32)))

    def step(i: int) -> int:
        batch, labels = encoded[i]
        net.head.loss(net(**batch), labels).backward()
        net.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum()) + n_virtual * len(labels)

    return step, net.num_trainable(), {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=os.environ.get("DOMAINLM_DATA", "../shared/data"), help="data directory"
    )
    parser.add_argument("--out", default="benchmarks/results", help="folder for throughput.json / .md")
    parser.add_argument("--model", default="minilm", help="backbone (default: the packaged MiniLM)")
    parser.add_argument("--batch-size", type=int, default=4, help="examples per step (bench default 4)")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per method")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = get_task("qed")
    data = spec.load(args.data, limit_train=args.batch_size * args.batches, limit_eval=1)
    batches = [data.train[i : i + args.batch_size] for i in range(0, len(data.train), args.batch_size)]
    config = TrainConfig(train_domain_tags=True, overflow="truncate", batch_size=args.batch_size)
    n_virtual = (len(Template(spec.template).domain_tags) + 1) * config.tag_length
    methods = {
        "tags": tag_steps(spec, data, args.model, config, batches),
        "prompt_tuning": prompt_tuning_steps(spec, data, args.model, batches, n_virtual),
    }
    for step, _, _ in methods.values():  # warm-up: allocator, lazy inits
        step(0)
    load_before = os.getloadavg()
    timings = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, (step, _, _) in methods.items():
            started, tokens = time.perf_counter(), 0
            for i in range(len(batches)):
                tokens += step(i)
            timings[name].append((tokens, time.perf_counter() - started))
    load_after = os.getloadavg()

    n_examples = sum(len(b) for b in batches)
    rows = []
    for name, (_, trainable, extra) in methods.items():
        per_round = [tokens / seconds for tokens, seconds in timings[name]]
        tokens = timings[name][0][0]
        rows.append(
            {
                "method": name,
                "tokens_per_s": round(statistics.median(per_round), 1),
                "tokens_per_s_rounds": [round(x, 1) for x in per_round],
                "examples_per_s": round(statistics.median(n_examples / s for _, s in timings[name]), 2),
                "positions_per_example": round(tokens / n_examples, 1),
                "trainable_params": trainable,
                **extra,
            }
        )
    ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
    record = {
        "command": shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]]),
        "model": args.model,
        "task": "qed",
        "batch_size": args.batch_size,
        "batches_per_round": len(batches),
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "rows": rows,
        "tags_over_prompt_tuning_tokens_per_s": round(ratio, 3),
    }
    out = Path(args.out)
    io.write_json(out / "throughput.json", record)
    lines = [
        f"# Training throughput on {args.model}: tags vs prompt tuning (forward + backward)",
        "",
        f"Same {n_examples} QED training examples, batch {args.batch_size}, {args.rounds} alternating rounds "
        f"(median shown); torch threads {record['torch_threads']} on {record['cpu_count']} CPUs; 1-min load "
        f"average {record['load_average_before_after'][0]} -> {record['load_average_before_after'][1]} "
        "(other jobs shared the machine).",
        "",
        f"    {record['command']}",
        "",
        "| method | tokens/s | examples/s | positions/example | trainable_params |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['tokens_per_s']:.0f} | {r['examples_per_s']:.2f} | "
            f"{r['positions_per_example']:.0f} | {r['trainable_params']:,} |"
        )
    lines += [
        "",
        "Both methods spell SMILES one character a token (the paper's tokenisation); the tag method's "
        "extra positions are its 20 tag vectors, prompt tuning's its 20 virtual tokens.",
    ]
    io.write_text(out / "throughput.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
