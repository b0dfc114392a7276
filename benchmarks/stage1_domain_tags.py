"""Stage 1 for real: a domain tag trained with the next-token loss on unlabelled domain text, on a causal LM.

Held-out per-token loss of the domain text, four ways: bare, after a plain-text description, after the
untrained tag, after the trained tag. Every variant is scored on the same tokens: the data span's own tokens
(spelled one character a token for character-level domains) from its second token on, so the description's
words and the first, unconditioned token never count.

    python benchmarks/stage1_domain_tags.py --data ../shared/data --model smollm2-135m --domain SMILES \
        --n-train 2000 --n-heldout 200 --out benchmarks/results/smollm2-135m/stage1
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from domainlm import io
from domainlm.corpus import read_corpus
from domainlm.engine.encoding import IGNORE
from domainlm.engine.inference import to_device
from domainlm.engine.model import TaggedModel
from domainlm.engine.template import Part
from domainlm.progress import progress_bar
from domainlm.tagruns import train_domain_tag
from domainlm.training import TrainConfig

DOMAINS = {
    "SMILES": ("corpora/dtc_ligands.json", "The SMILES of the molecule is"),
    "Protein": ("corpora/dtc_proteins.json", "The amino-acid sequence of the protein is"),
}


def variants(tag: str, description: str, text: str) -> dict[str, list[Part]]:
    data = Part("data", text, domain=tag)
    return {
        "bare": [data],
        "description": [Part("text", description + " "), data],
        "tag": [Part("tag", tag), Part("text", " "), data],
    }


@torch.no_grad()
def data_token_loss(tm: TaggedModel, inputs: list[list[Part]], n_data: list[int], batch_size: int) -> float:
    """Mean next-token loss over each input's data tokens but the first (its last n_data - 1 real tokens)."""
    tm.eval()
    total, count = 0.0, 0
    with progress_bar(total=len(inputs), description="scoring") as bar:
        for s in range(0, len(inputs), batch_size):
            batch = to_device(tm.encode(inputs[s : s + batch_size], lm_labels=True), tm.device)
            logits = tm(**batch, return_logits=True).logits[:, :-1].float()
            targets = batch["lm_labels"][:, 1:].clone()
            real = batch["attention_mask"][:, 1:].bool()
            for row, n in enumerate(n_data[s : s + batch_size]):
                ends = real[row].nonzero().max().item() + 1 - len(tm.encoder.suffix)
                keep = torch.zeros_like(real[row])
                keep[ends - (n - 1) : ends] = True
                targets[row][~keep] = IGNORE
            losses = F.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            total += float(losses)
            count += int((targets != IGNORE).sum())
            bar.update(min(s + batch_size, len(inputs)))
    return total / count


def score_all(tm, tag, description, texts, batch_size) -> dict[str, float]:
    specials = len(tm.encoder.prefix) + len(tm.encoder.suffix)
    n_data = [len(tm.encoder.encode([Part("data", t, domain=tag)]).ids) - specials for t in texts]
    out = {}
    for name in ("bare", "description", "tag"):
        out[name] = data_token_loss(
            tm, [variants(tag, description, t)[name] for t in texts], n_data, batch_size
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the shared data directory")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--domain", choices=sorted(DOMAINS), default="SMILES")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-heldout", type=int, default=200)
    ap.add_argument("--max-chars", type=int, default=256, help="texts cut to this many characters (CPU time)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tag-length", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus, description = DOMAINS[args.domain]
    texts = [t[: args.max_chars] for t in read_corpus(Path(args.data) / corpus)]
    random.Random(0).shuffle(texts)
    heldout, train = texts[: args.n_heldout], texts[args.n_heldout : args.n_heldout + args.n_train]

    started = time.time()
    tm = TaggedModel.from_pretrained(args.model)
    tm.add_tag(args.domain, "domain", length=args.tag_length, char_level=True)
    before = score_all(tm, args.domain, description, heldout, 16)
    config = TrainConfig(
        stage="domain",
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=1,
        tag_length=args.tag_length,
        eval_batch_size=16,
        evals_per_epoch=2,
    )
    run = train_domain_tag(
        train,
        args.domain,
        tm,
        args.out / f"run-{args.domain}",
        config,
        char_level=True,
        val_fraction=0.05,
        overwrite=True,
    )
    after = score_all(tm, args.domain, description, heldout, 16)
    losses = {
        **{k: v for k, v in before.items() if k != "tag"},
        "untrained tag": before["tag"],
        "trained tag": after["tag"],
    }
    result = {
        "model": args.model,
        "domain": args.domain,
        "n_train": len(train),
        "n_heldout": len(heldout),
        "max_chars": args.max_chars,
        "heldout_loss_per_token": losses,
        "trained_tag_beats_the_rest": all(
            losses["trained tag"] < v for k, v in losses.items() if k != "trained tag"
        ),
        "train": {k: run[k] for k in ("n_train", "n_val", "train_tokens_per_s", "val_lm_loss") if k in run},
        "seconds": round(time.time() - started, 1),
        "command": "python " + shlex.join(sys.argv),
    }
    io.write_json(args.out / f"{args.domain}.json", result)
    lines = [
        f"# Stage 1 on {args.model}: <{args.domain}> held-out per-token loss",
        "",
        f"{len(train)} training texts, {len(heldout)} held out, texts cut to {args.max_chars} characters; "
        "the data span's own tokens from the second on. Lower is better.",
        "",
        "| conditioning | loss (nats / token) |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in losses.items()],
        "",
        f"Command: `{result['command']}` ({result['seconds']:.0f} s)",
    ]
    io.write_text(args.out / f"{args.domain}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
