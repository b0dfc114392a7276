"""Diagnose the tag method before tuning it: does the read-out position carry the span's information, and
can the function tag and its head overfit a few dozen training examples?

1. Probe. With untrained tags (the paper's initialisation, everything frozen) a RidgeCV on the final hidden
   state at (a) the read-out position (the function tag's last vector, isolated attention as regression
   training uses), (b) the mean over the function tag's p vectors, (c) the last token of the plain text
   without tags (what the linear-probe baseline reads), (d) the mean-pooled last hidden state of the plain
   text. Test MSE of each against the mean predictor's.
2. Overfit. The function tag and its head (domain tag frozen, span keys/values reused) trained on a small
   training set for several epochs at each learning rate; final training MSE against the mean predictor's
   (the labels' variance). Controls: the head alone on the frozen read-out features (same loop, same
   settings, far more epochs as it costs nothing), and the minimum-norm least-squares fit of those features
   (can a linear read-out of the untrained tag interpolate the set at all?).

Tagged features come from the span cache (each molecule's span once, then the function segment), so the
overfit runs reuse the spans the probe computed.

    python benchmarks/tag_diagnostics.py --data ../shared/data --model smollm2-135m \
        --out benchmarks/results/smollm2-135m/diagnostics
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from domainlm import io
from domainlm.baselines.peft_heads import plain_text, pool
from domainlm.batching import pad_ids
from domainlm.engine.heads import Head
from domainlm.engine.inference import predict
from domainlm.engine.model import TaggedModel
from domainlm.engine.reuse import SpanCache, reused_forward, split_example
from domainlm.engine.tag_specs import initial_tag
from domainlm.engine.tag_training import Split, TagMethod
from domainlm.engine.template import Template
from domainlm.progress import batches_by_length
from domainlm.tagruns import prepare_tags, render_split
from domainlm.tasks import get_task
from domainlm.training import TrainableMethod, TrainConfig, fit

ALPHAS = tuple(10.0**k for k in range(-3, 7))
FEATURES = {
    "readout": "read-out position (function tag's last vector, isolated)",
    "tag_mean": "mean over the function tag's p vectors (isolated)",
    "plain_last": "plain text, last token (linear-probe baseline)",
    "plain_mean": "plain text, mean-pooled last hidden state",
}


# ---- features ------------------------------------------------------------------------------------------


@torch.no_grad()
def tagged_features(
    tm: TaggedModel, cache: SpanCache, inputs: list, batch_size: int
) -> dict[str, np.ndarray]:
    """Final hidden states at the function tag (read-out and mean over its vectors), via the span cache."""
    captured = {}

    def keep(_module, _args, output):  # the last backbone call in reused_forward is the function segment
        captured["hidden"] = output.last_hidden_state

    out = {k: np.zeros((len(inputs), tm.hidden_size), np.float32) for k in ("readout", "tag_mean")}
    lengths = [len(tm.encoder.encode(x, i).ids) for i, x in enumerate(inputs)]
    handle = tm.backbone.register_forward_hook(keep)
    try:
        for idx in batches_by_length(lengths, batch_size, "tagged features"):
            items = [inputs[i] for i in idx]
            reused_forward(tm, cache, items)
            hidden = captured["hidden"].float()
            for row, (i, item) in enumerate(zip(idx, items)):
                ex = tm.encoder.encode(item, i, isolate=True)
                _, start = split_example(ex)
                last = ex.readout - start
                p = tm.specs[ex.function_tag].length
                out["readout"][i] = hidden[row, last].cpu().numpy()
                out["tag_mean"][i] = hidden[row, last - p + 1 : last + 1].mean(0).cpu().numpy()
    finally:
        handle.remove()
    return out


@torch.no_grad()
def plain_features(tm: TaggedModel, template: Template, examples, char_level, batch_size: int):
    """Last-token and mean-pooled final hidden states of the template without markers (no tags)."""
    ids = [tm.tokenizer(plain_text(template, e.fields, char_level, item=e.id))["input_ids"] for e in examples]
    out = {k: np.zeros((len(ids), tm.hidden_size), np.float32) for k in ("plain_last", "plain_mean")}
    for idx in batches_by_length([len(x) for x in ids], batch_size, "plain features"):
        batch = pad_ids([ids[i] for i in idx], tm.encoder.placeholder, device=tm.device)
        hidden = tm.backbone(**batch).last_hidden_state.float()
        out["plain_last"][idx] = pool(hidden, batch["attention_mask"], causal=True).cpu().numpy()
        out["plain_mean"][idx] = pool(hidden, batch["attention_mask"], causal=False).cpu().numpy()
    return out, float(np.mean([len(x) for x in ids]))


def spread(x: np.ndarray) -> dict[str, float]:
    """How much the states differ between molecules: variance around the centroid over the centroid's squared
    norm, and the share of that variance on the first principal component."""
    centred = x - x.mean(0)
    s = np.linalg.svd(centred, compute_uv=False) ** 2
    return {
        "relative_spread": float((centred**2).sum(1).mean() / (x.mean(0) ** 2).sum()),
        "pc1_share": float(s[0] / s.sum()),
        "mean_norm": float(np.linalg.norm(x, axis=1).mean()),
    }


def mse_with_se(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    sq = (np.asarray(pred, float) - y) ** 2
    return float(sq.mean()), float(sq.std(ddof=1) / math.sqrt(len(sq)))


def probe(feats: dict, y_train: np.ndarray, y_test: np.ndarray) -> dict:
    from sklearn.linear_model import RidgeCV

    out = {}
    mean_mse, mean_se = mse_with_se(y_test, np.full_like(y_test, y_train.mean()))
    out["mean_predictor"] = {"test_mse": mean_mse, "test_mse_se": mean_se}
    for name in FEATURES:
        ridge = RidgeCV(alphas=ALPHAS).fit(feats["train"][name], y_train)
        mse, se = mse_with_se(y_test, ridge.predict(feats["test"][name]))
        out[name] = {
            "test_mse": mse,
            "test_mse_se": se,
            "train_mse": float(np.mean((ridge.predict(feats["train"][name]) - y_train) ** 2)),
            "alpha": float(ridge.alpha_),
            "alpha_at_grid_edge": ridge.alpha_ in (ALPHAS[0], ALPHAS[-1]),
            **spread(feats["train"][name]),
        }
    return out


# ---- overfitting ---------------------------------------------------------------------------------------


class FixedFeatureHead(TrainableMethod):
    """The function tag's head alone on frozen read-out features: the tag method's loop and loss, no model."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, head: Head):
        self.module = head
        self.x = torch.as_tensor(features, dtype=torch.float32)
        self.y = torch.as_tensor(labels, dtype=torch.float32)
        self.n_examples = len(labels)

    def loss(self, batch: list[int]) -> torch.Tensor:
        return self.module.loss(self.module(self.x[batch]), self.y[batch])

    def tokens(self, batch: list[int]) -> int:
        return len(batch)


def reset_function_tag(tm: TaggedModel, name: str) -> None:
    with torch.no_grad():
        emb = tm.base.get_input_embeddings().weight
        tm.tag_vectors[name].copy_(initial_tag(emb, tm.specs[name].length))
        nn.init.zeros_(tm.heads[name].linear.weight)
        nn.init.zeros_(tm.heads[name].linear.bias)


def curve(history: list[dict], var: float) -> list[dict]:
    """Per-epoch mean training loss (standardised: 1.0 is the mean predictor) and in label units."""
    by_epoch: dict[int, list[float]] = {}
    for row in history:
        if row["train_loss"] is not None:
            by_epoch.setdefault(math.ceil(row["epoch"] - 1e-9), []).append(row["train_loss"])
    return [
        {"epoch": e, "loss_std_units": float(np.mean(v)), "mse": float(np.mean(v)) * var}
        for e, v in sorted(by_epoch.items())
    ]


def overfit_tag(tm, cache, split: Split, test: Split, func, domain, lr, epochs, batch_size) -> dict:
    reset_function_tag(tm, func)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=1, checkpoint_every=0)
    method = TagMethod(tm, config, split, function_tag=func, domain_tags=domain)
    if not (method.isolate and method.reuse):
        raise SystemExit("expected isolated attention with span reuse for a regression function tag")
    method.cache = cache  # the frozen domain tag's spans, computed once for the probe
    started = time.time()
    lines: list[str] = []
    trained = fit(method, config.loop(), log=lines.append, description=f"tag+head lr={lr:g}")
    seconds = time.time() - started
    y = np.asarray(split.labels, float)
    train_pred = predict(tm, split.inputs, isolate=True, cache=cache, batch_size=32).reshape(-1)
    test_pred = predict(tm, test.inputs, isolate=True, cache=cache, batch_size=32).reshape(-1)
    return {
        "lr": lr,
        "epochs": epochs,
        "steps": trained.steps,
        "trainable_params": tm.num_trainable(),
        "train_mse": float(np.mean((train_pred - y) ** 2)),
        "test_mse": mse_with_se(np.asarray(test.labels, float), test_pred)[0],
        "curve": curve(trained.history, float(y.var())),
        "skipped_batches": trained.skipped_batches,
        "seconds": round(seconds, 1),
    }


def overfit_head(features, labels, head_spec, hidden, lr, epochs, batch_size, test_x, test_y) -> dict:
    torch.manual_seed(0)
    head = Head(hidden, head_spec)
    method = FixedFeatureHead(features, labels, head)
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=1, checkpoint_every=0)
    trained = fit(method, config.loop(), log=lambda _: None, description=f"head lr={lr:g}")
    with torch.no_grad():
        train_pred = head.predictions(head(method.x)).numpy()
        test_pred = head.predictions(head(torch.as_tensor(test_x))).numpy()
    return {
        "lr": lr,
        "epochs": epochs,
        "steps": trained.steps,
        "train_mse": float(np.mean((train_pred - labels) ** 2)),
        "test_mse": float(np.mean((test_pred - test_y) ** 2)),
        "curve": curve(trained.history, float(labels.var())),
    }


def least_squares(features: np.ndarray, labels: np.ndarray) -> dict:
    """Minimum-norm linear fit with intercept: can any linear head interpolate these features?"""
    x = features - features.mean(0)
    coef, *_ = np.linalg.lstsq(x.astype(np.float64), labels - labels.mean(), rcond=None)
    pred = x @ coef + labels.mean()
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    return {
        "train_mse": float(np.mean((pred - labels) ** 2)),
        "rank": int((s > s[0] * 1e-6).sum()),
        "condition": float(s[0] / s[min(len(s), len(labels) - 1) - 1]),
    }


# ---- report --------------------------------------------------------------------------------------------


def markdown(r: dict) -> str:
    p, o = r["probe"], r["overfit"]
    lines = [
        f"# Tag diagnostics on {r['model']}: {r['task']}",
        "",
        f"## Probe: RidgeCV on frozen final hidden states (untrained tags), {r['n_train']} train / "
        f"{r['n_test']} test molecules",
        "",
        f"Test label variance {r['test_label_var']:.4f}. SE: standard error of the test MSE. "
        "Spread: variance between molecules over the centroid's squared norm; "
        "PC1: share of that variance on one direction.",
        "",
        "| features | test MSE | SE | train MSE | alpha | spread | PC1 |",
        "|---|---|---|---|---|---|---|",
        f"| mean predictor | {p['mean_predictor']['test_mse']:.4f} | {p['mean_predictor']['test_mse_se']:.4f}"
        " | | | | |",
    ]
    for name, label in FEATURES.items():
        f = p[name]
        edge = " (edge)" if f["alpha_at_grid_edge"] else ""
        lines.append(
            f"| {label} | {f['test_mse']:.4f} | {f['test_mse_se']:.4f} | {f['train_mse']:.4f} | "
            f"{f['alpha']:g}{edge} | {f['relative_spread']:.3g} | {f['pc1_share']:.2f} |"
        )
    ls = o["least_squares_readout"]
    lines += [
        "",
        f"## Overfit: {o['n']} training molecules (label variance = mean predictor's training MSE "
        f"{o['label_var']:.4f})",
        "",
        f"Batch {o['batch_size']}, AdamW, cosine schedule with 3% warm-up, gradient clipping 1.0 (the tag "
        "loop's defaults), no validation selection: the final weights. Loss in standardised units (1.0 = "
        "the mean predictor). Minimum-norm least squares on the untrained read-out features: training MSE "
        f"{ls['train_mse']:.2e} (rank {ls['rank']}, condition {ls['condition']:.3g}).",
        "",
        "| what trains | lr | epochs | steps | loss epoch 1 | loss mid | loss last epoch | final train MSE |"
        " test MSE | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("tag + head", x) for x in o["tag_and_head"]] + [
        ("head only (frozen tag)", x) for x in o["head_only"]
    ]
    for what, x in rows:
        c = x["curve"]
        mid = c[len(c) // 2 - 1] if len(c) > 1 else c[0]
        lines.append(
            f"| {what} | {x['lr']:g} | {x['epochs']:g} | {x['steps']} | {c[0]['loss_std_units']:.3f} | "
            f"{mid['loss_std_units']:.3f} (ep {mid['epoch']}) | {c[-1]['loss_std_units']:.3f} | "
            f"{x['train_mse']:.4f} | {x['test_mse']:.4f} | {x.get('seconds', '')} |"
        )
    lines += [
        "",
        "Not run: a small MLP head (the engine's head is linear; it needs a change in "
        "src/domainlm/engine/heads.py).",
        "",
        f"Timings (s): {r['timings']}",
        "",
        f"Command: `{r['command']}` ({r['seconds']:.0f} s)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the shared data directory")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="qed")
    ap.add_argument("--n-train", type=int, default=300, help="probe training molecules")
    ap.add_argument("--n-test", type=int, default=100, help="probe test molecules")
    ap.add_argument("--n-overfit", type=int, default=64, help="the first n probe training molecules")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    ap.add_argument("--epochs", type=float, default=50, help="tag + head epochs")
    ap.add_argument("--head-epochs", type=float, default=200, help="head-only control epochs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--feature-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n_overfit > args.n_train:
        raise SystemExit("--n-overfit must not exceed --n-train")
    started, timings = time.time(), {}

    spec = get_task(args.task)
    data = spec.load(Path(args.data), limit_train=args.n_train, limit_eval=args.n_test)
    template = Template(spec.template)
    func, domain = template.function_tag, template.domain_tags
    tm = TaggedModel.from_pretrained(args.model)
    tm.eval()
    overfit_examples = data.train[: args.n_overfit]
    prepare_tags(tm, template, spec, overfit_examples, TrainConfig())  # head standardised on the overfit set
    splits = {"train": render_split(template, data.train), "test": render_split(template, data.test)}
    y = {name: np.asarray(s.labels, float) for name, s in splits.items()}

    t = time.time()
    cache = SpanCache(tm)
    feats = {
        name: tagged_features(tm, cache, s.inputs, args.feature_batch_size) for name, s in splits.items()
    }
    timings["tagged_features"] = round(time.time() - t, 1)
    t = time.time()
    plain_len = {}
    for name, examples in (("train", data.train), ("test", data.test)):
        plain, plain_len[name] = plain_features(
            tm, template, examples, spec.char_level_tags, args.feature_batch_size
        )
        feats[name].update(plain)
    timings["plain_features"] = round(time.time() - t, 1)
    probe_result = probe(feats, y["train"], y["test"])

    n = args.n_overfit
    small = Split(splits["train"].inputs[:n], splits["train"].labels[:n], splits["train"].ids[:n])
    y_small = y["train"][:n]
    head_spec = tm.specs[func].head
    head_only = [
        overfit_head(
            feats["train"]["readout"][:n],
            y_small,
            head_spec,
            tm.hidden_size,
            lr,
            epochs,
            args.batch_size,
            feats["test"]["readout"],
            y["test"],
        )
        for lr in args.lrs
        for epochs in dict.fromkeys([args.epochs, args.head_epochs])
    ]
    t = time.time()
    tag_and_head = [
        overfit_tag(tm, cache, small, splits["test"], func, domain, lr, args.epochs, args.batch_size)
        for lr in args.lrs
    ]
    timings["tag_and_head"] = round(time.time() - t, 1)

    result = {
        "model": args.model,
        "task": args.task,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "test_label_var": float(y["test"].var()),
        "mean_plain_tokens": plain_len,
        "span_cache": {**vars(cache.stats), "bytes": cache.bytes},
        "probe": probe_result,
        "overfit": {
            "n": n,
            "label_var": float(y_small.var()),
            "batch_size": args.batch_size,
            "least_squares_readout": least_squares(feats["train"]["readout"][:n], y_small),
            "tag_and_head": tag_and_head,
            "head_only": head_only,
            "mlp_head": "not run: the engine's head is linear (src/domainlm/engine/heads.py)",
        },
        "timings": timings,
        "seconds": round(time.time() - started, 1),
        "command": "python " + shlex.join(sys.argv),
    }
    io.write_json(args.out / f"{args.task}.json", result)
    text = markdown(result)
    io.write_text(args.out / f"{args.task}.md", text)
    print(text)


if __name__ == "__main__":
    main()
