"""PubMedQA students on the official split (fold 0 as dev): the packaged MiniLM as a classification student
(sequence classification + LoRA, and a <PubMedQA> function tag), and a tiny random causal LM through the
generative LoRA path as a smoke check only (no real causal LM can be loaded offline).

    python benchmarks/pubmedqa_students.py [--data DIR] [--epochs 3] [--max-length 256] [--threads 1]

Run folders go to benchmarks/cache/pubmedqa_students/; writes benchmarks/results/pubmedqa_students.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from domainlm import io
from domainlm.qa.students import StudentConfig, compare_runs, finetune
from domainlm.qa.students.compare import markdown
from domainlm.qa.students.config import Decoding

# dev-only helpers (tiny models, a fake OpenAI server) live beside the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

HERE = Path(__file__).parent
RESULTS = HERE / "results"
RUNS = HERE / "cache" / "pubmedqa_students"


def plans(args) -> dict[str, dict]:
    """name -> StudentConfig settings. Classification students use a larger learning rate than the paper's
    5e-5 (which is for 7B-scale LoRA): a 22M-parameter encoder with a fresh head needs it, and the budget
    allows few epochs."""
    classifier = dict(
        model="minilm",
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=8,
        grad_accum=2,
        lr=1e-3,
        warmup_ratio=0.06,
        eval_batch_size=32,
        save_every=0,
    )
    return {
        "minilm-seqcls-lora": dict(method="seqcls-lora", lora_rank=4, lora_alpha=16, **classifier),
        "minilm-tag": dict(method="tag", tag_length=10, **classifier),
        # Smoke check of the generative path: random weights, so its accuracy means nothing.
        "tiny-llama-lora-smoke": dict(
            method="lora",
            model=str(tiny_causal_lm()),
            max_length=256,
            max_answer_tokens=48,
            epochs=1,
            batch_size=8,
            grad_accum=4,
            lr=1e-3,
            eval_batch_size=32,
            save_every=0,
        ),
    }


def tiny_causal_lm() -> Path:
    from tiny_models import tiny_model

    path = RUNS / "tiny-llama-model"
    if not (path / "config.json").is_file():
        model, tokenizer = tiny_model("llama")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("DOMAINLM_DATA", str(HERE.parent.parent / "shared" / "data")),
        help="PubMedQA data directory (holds pubmedqa/ori_pqal.json)",
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs for the MiniLM students")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example (context cut to fit)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these plans")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "split": "PubMedQA official: 450 train / 50 dev (fold 0) / 500 test",
        "runs": previous_runs() if args.only else {},  # --only reruns some plans and keeps the others
    }
    for name, settings in plans(args).items():
        if args.only and name not in args.only:
            continue
        config = StudentConfig(data=args.data, split="official", fold=0, **settings)
        started = time.time()
        report = finetune(config, RUNS / name, overwrite=True, decoding=Decoding.greedy())
        results["runs"][name] = {
            "settings": config.to_dict(),
            "seconds": round(time.time() - started, 1),
            "splits": report["splits"],
            "majority": report["majority"],
            "training": report["training"],
            "decoding": report["decoding"],
        }
        print(
            f"{name}: {report['splits']['test']['accuracy']:.3f} test accuracy, "
            f"{time.time() - started:.0f} s",
            flush=True,
        )
        write(results)


def previous_runs() -> dict:
    path = RESULTS / "pubmedqa_students.json"
    return json.loads(path.read_text())["runs"] if path.is_file() else {}


def write(results: dict) -> None:
    io.write_json(RESULTS / "pubmedqa_students.json", results)
    rows = compare_runs([str(RUNS / name) for name in results["runs"]], RUNS / "compare")
    machine = results["machine"]
    lines = [
        "# PubMedQA students (official split, fold 0)",
        "",
        f"Machine: {machine['cores']} CPU cores, torch threads {machine['torch_threads']}; "
        "greedy decoding for the generative smoke run.",
        "",
        "| run | epochs | max length | lr | effective batch | trainable params | contexts cut (train) | "
        "seconds | dev acc | test acc | test macro-F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        s, t = r["settings"], r["training"]
        batch = s["batch_size"] * s["grad_accum"]
        lines.append(
            f"| {name} | {s['epochs']} | {s['max_length']} | {s['lr']:g} | {batch} | "
            f"{t['parameters']['trainable']:,} | {t['truncated_contexts']['train']} | {r['seconds']:.0f} | "
            f"{r['splits']['dev']['accuracy']:.3f} | {r['splits']['test']['accuracy']:.3f} | "
            f"{r['splits']['test']['macro_f1']:.3f} |"
        )
    lines += [
        "",
        "The tiny causal model has random weights and a toy tokenizer: its row only shows that the "
        "generative path (LoRA, generation, answer parsing) runs end to end on real data.",
        "",
        markdown(rows).replace("# PubMedQA students", "## Beside the majority class and published figures"),
    ]
    io.write_text(RESULTS / "pubmedqa_students.md", "\n".join(lines))


if __name__ == "__main__":
    main()
