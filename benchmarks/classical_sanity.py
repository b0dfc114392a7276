"""Sanity check of the classical baselines on dta (Davis, test fold) and synergy (O'Neil, test fold 0).

Not the committed benchmark (that is `domainlm bench`): a quick look that the data, features and metrics
give numbers in the range the literature reports. Writes benchmarks/results/classical_sanity.{json,md}.

    python benchmarks/classical_sanity.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from domainlm import io
from domainlm.baselines import featurize_task, run_baseline
from domainlm.bench import anchor_text
from domainlm.tasks import get_task

RESULTS = Path(__file__).resolve().parent / "results"
TASK_OPTIONS = {"dta": {"val_fold": 0}, "synergy": {"fold": 0}}
THREADED = {"random_forest", "gradient_boosting"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=os.environ.get("DOMAINLM_DATA", "../shared/data"), help="data root")
    parser.add_argument("--tasks", default="dta,synergy", help="comma-separated task names")
    parser.add_argument(
        "--methods", default="mean,random_forest,gradient_boosting", help="comma-separated classical methods"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for every method")
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="threads for random forest and LightGBM (default: theirs, all cores and 1)",
    )
    parser.add_argument("--out", default=str(RESULTS / "classical_sanity"), help="output path without suffix")
    args = parser.parse_args()

    rows, anchors = [], {}
    for task_name in args.tasks.split(","):
        spec = get_task(task_name)
        started = time.perf_counter()
        data = spec.load(args.data, **TASK_OPTIONS.get(task_name, {}))
        anchors[task_name] = spec.anchors_for(data.info)  # those of the data set loaded
        features = featurize_task(data, spec)
        prep_seconds = round(time.perf_counter() - started, 2)
        sizes = {split: len(y) for split, y in features.y.items()}
        print(
            f"{task_name}: {sizes}, {features.info['n_features']} features, load + featurize {prep_seconds} s"
        )
        for method in args.methods.split(","):
            cpu_started = time.process_time()  # CPU time of all threads: readable on a shared, busy machine
            threads = {"n_jobs": args.n_jobs} if args.n_jobs and method in THREADED else {}
            row, _ = run_baseline(method, features, spec.metrics, seed=args.seed, **threads)
            row["n_jobs"] = threads.get("n_jobs", "default") if method in THREADED else None
            row = {
                "task": task_name,
                **row,
                "cpu_seconds": round(time.process_time() - cpu_started, 2),
                "prep_seconds": prep_seconds,
                **{f"n_{k}": v for k, v in sizes.items()},
            }
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            rows.append(row)
    io.write_json(f"{args.out}.json", rows)
    io.write_text(f"{args.out}.md", markdown_table(rows, anchors))
    print(f"wrote {args.out}.json and {args.out}.md")


def markdown_table(rows: list[dict], anchors: dict[str, tuple]) -> str:
    blocks = []
    for task in dict.fromkeys(r["task"] for r in rows):
        task_rows = [r for r in rows if r["task"] == task]
        metrics = [k for k in task_rows[0] if k.startswith("test_")]
        header = ["method", *metrics, "seconds", "cpu_seconds", "seed"]
        lines = [f"### {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in task_rows:
            times = [f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}"]
            cells = [r["method"], *(f"{r[m]:.3f}" for m in metrics), *times, str(r["seed"])]
            lines.append("| " + " | ".join(cells) + " |")
        if anchors[task]:
            lines += ["", "Published: " + "; ".join(anchor_text(name, m) for name, m in anchors[task]) + "."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
    main()
