"""Translation with language tags on FLORES-200 devtest, beside the same frozen model prompted in words and
two PEFT baselines, to show zero-shot composition (issue 14).

Rows, all on one frozen base model:
* base 0-shot / 3-shot: "Translate from French to English." then `French: ...` / `English:` lines (shots:
  Tatoeba pairs, joined through their English side for pairs without an English side);
* prompt tuning (peft), as many virtual tokens as a tagged prompt holds tag vectors (3 x tag length);
* LoRA (peft; r 8, alpha 16, dropout 0.05);
* tags: stage 1 language tags (<EN> <FR> <DE> <IT> <ES> <PT>, next-token loss on one side of the Tatoeba
  pairs), then stage 3 <Translate> on the trained directions, language tags frozen;
* tags_untrained (only when named in --rows): the same language tags, <Translate> at its initial value.
PEFT rows and <Translate> train on the same Tatoeba pairs (FLORES sentences excluded). Directions scored:
the trained ones, IT->FR (a pair never trained) and ES->PT (languages seen only in stage 1), on a fixed
seeded subset of FLORES devtest (`--flores-lines`; all 1,012 with 0). Scores: sacrebleu BLEU and chrF++,
spBLEU with `--spm-model` (a local FLORES SentencePiece model; it cannot be downloaded here).

    python benchmarks/translation.py --model gemma3-270m --data ../shared/data \
        --out benchmarks/results/gemma3-270m/translation --flores-lines 50
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path

from domainlm import io
from domainlm.baselines.peft_generation import GenerativePeft, plain_prompt
from domainlm.corpus import CorpusSource
from domainlm.engine.generation import Decoding
from domainlm.engine.model import TaggedModel
from domainlm.engine.template import Template
from domainlm.langid import LanguageIdentifier
from domainlm.tagruns import prepare_generative_tags, train_domain_tag, train_tagged_task
from domainlm.tasks import get_task
from domainlm.tasks.translation import (
    LANGUAGES,
    Language,
    flores_dir,
    flores_lines,
    flores_subset,
    pair_files,
    parse_directions,
    read_aligned,
    tatoeba_dir,
)
from domainlm.textmetrics import SPBLEU_UNAVAILABLE, translation_scores
from domainlm.training import TrainConfig

STAGE1 = ("EN", "FR", "DE", "IT", "ES", "PT")
TRAINED = "en-fr,fr-en,en-de,de-en,en-it,it-en"
ZERO_SHOT = "it-fr,es-pt"
TRANSLATE_WORDS = " translation:"  # "Output: <FR> <Translate>" read as "Output: French translation:"
# tags_untrained: the stage-1 language tags with <Translate> at its initial value, no stage 3: what stage 3
# adds (or costs) on each direction, zero-shot ones included. Asked for by name only.
ROWS = ("base_0shot", "base_3shot", "prompt_tuning", "lora", "tags_untrained", "tags")
DEFAULT_ROWS = tuple(r for r in ROWS if r != "tags_untrained")


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a causal LM (name, directory or GGUF alias)")
    p.add_argument("--data", required=True, help="the shared data directory")
    p.add_argument("--out", required=True, help="folder for runs, translation.json and translation.md")
    p.add_argument("--flores-lines", type=int, default=50, help="seeded FLORES devtest subset (0: all)")
    p.add_argument("--stage1-sentences", type=int, default=2000, help="monolingual sentences per language")
    p.add_argument("--train-pairs", type=int, default=3000, help="Tatoeba examples for <Translate> and PEFT")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--stage1-epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3, help="tags and PEFT alike")
    p.add_argument(
        "--tag-lr", type=float, default=None, help="<Translate>'s own learning rate (default --lr)"
    )
    p.add_argument(
        "--stage1-tags",
        default=None,
        help="a folder of finished stage-1 runs (<out>/stage1 of an earlier run: EN/tags, FR/tags, ...) to "
        "load instead of training the language tags again",
    )
    p.add_argument(
        "--tag-init",
        choices=("mean", "words"),
        default="mean",
        help="how new tags start: the paper's mean embedding, or the embeddings of words (<FR>: 'French', "
        f"<Translate>: {TRANSLATE_WORDS!r})",
    )
    p.add_argument(
        "--multiway",
        action="store_true",
        help="train on English sentences translated into several of the trained languages first, each with "
        "all its directions, so that only the target language tag tells the outputs apart",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--tag-length", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--gen-batch-size", type=int, default=8)
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"which of {', '.join(ROWS)}")
    p.add_argument("--directions", default=f"{TRAINED},{ZERO_SHOT}", help="directions scored")
    p.add_argument("--trained", default=TRAINED, help="directions <Translate> and the PEFT rows train on")
    p.add_argument(
        "--langid-sentences", type=int, default=2000, help="Tatoeba sentences per language for language ID"
    )
    p.add_argument("--spm-model", default=None, help="a local FLORES SentencePiece model, for spBLEU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="keep the finished rows of --out's translation.json")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = arguments(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    scored = parse_directions(args.directions)
    flores = flores_dir(args.data)
    subset = flores_subset(1012, args.flores_lines or None, args.seed)
    test = {lang: [flores_lines(flores, lang)[i] for i in subset] for lang in {x for d in scored for x in d}}
    decoding = Decoding(args.max_new_tokens, args.num_beams, True, args.gen_batch_size)
    spm = args.spm_model if args.spm_model and Path(args.spm_model).is_file() else None
    notes = [] if spm else [SPBLEU_UNAVAILABLE]
    tm = TaggedModel.from_pretrained(args.model)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        tag_length=args.tag_length,
        seed=args.seed,
        evals_per_epoch=1,
        checkpoint_every=0,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        tag_init_text=init_words() if args.tag_init == "words" else {},
    )
    spec = get_task("translation")
    data = spec.load(
        args.data,
        directions=args.trained,
        limit_train=args.train_pairs,
        limit_eval=20,
        seed=args.seed,
        multiway=args.multiway,
    )
    results: dict = {"rows": {}, "trainable_params": {}, "train_seconds": {}}
    if args.resume:
        results = finished_rows(out / "translation.json", vars(args), scored) or results
    languages = sorted({x.tag for d in scored for x in d})
    lid = LanguageIdentifier.from_tatoeba(args.data, languages, args.langid_sentences, seed=args.seed)
    results["langid_on_references"] = {
        tag: lid.shares(test[LANGUAGES[tag]], tag)[tag] for tag in languages
    }  # how far the language shares below can be trusted
    for row, got in results["rows"].items():  # resumed rows scored before the language shares existed
        for src, tgt in scored:
            path = out / "generations" / f"{row}-{src.tag}-{tgt.tag}.txt"
            if "in_target" not in got[f"{src.tag}-{tgt.tag}"] and path.is_file():
                texts = path.read_text(encoding="utf-8").split("\n")[: len(subset)]
                got[f"{src.tag}-{tgt.tag}"].update(language_shares(lid, texts, src, tgt))
    wanted = [r for r in rows if r not in results["rows"]]
    if len(wanted) < len(rows):
        print(f"resuming: kept the finished rows {', '.join(r for r in rows if r not in wanted)}", flush=True)

    def score(row: str, generate) -> None:
        results["rows"][row] = {}
        for src, tgt in scored:
            gen = generate(src, tgt, test[src])
            io.write_text(out / "generations" / f"{row}-{src.tag}-{tgt.tag}.txt", "\n".join(gen.texts) + "\n")
            scores = translation_scores(gen.texts, test[tgt], spm)
            scores["gen_tokens_per_s"] = round(gen.tokens_per_s, 1)
            scores.update(language_shares(lid, gen.texts, src, tgt))
            results["rows"][row][f"{src.tag}-{tgt.tag}"] = scores
            print(f"{row} {src.tag}-{tgt.tag}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
        io.write_json(out / "translation.json", {**results, "settings": vars(args)})

    if "base_0shot" in wanted:
        score(
            "base_0shot",
            lambda s, t, lines: tm.generate(prompts(s, t, lines), details=True, **vars(decoding)),
        )
    if "base_3shot" in wanted:
        folder = tatoeba_dir(args.data)
        score(
            "base_3shot",
            lambda s, t, lines: tm.generate(
                prompts(s, t, lines, shots(folder, s, t, args.seed)), details=True, **vars(decoding)
            ),
        )
    train_prompts = [plain_words(ex.fields) for ex in data.train]
    train_targets = [ex.fields["target"] for ex in data.train]
    for method in ("prompt_tuning", "lora"):
        if method not in wanted:
            continue
        started = time.time()
        peft = GenerativePeft(args.model, method, num_virtual_tokens=3 * args.tag_length, seed=args.seed)
        peft.set_pairs(train_prompts, train_targets)
        peft.fit(config.loop())
        results["trainable_params"][method] = peft.num_trainable()
        results["train_seconds"][method] = round(time.time() - started, 1)
        score(
            method,
            lambda s, t, lines, m=peft: m.generate(
                [plain_prompt(s.name, t.name, x) for x in lines], decoding
            ),
        )
        del peft
    template = Template(spec.template)

    def tagged(s: Language, t: Language, lines: list[str]):
        parts = [template.render({"src": s.tag, "tgt": t.tag, "source": x}, prompt=True) for x in lines]
        return tm.generate(parts, details=True, **vars(decoding))

    if {"tags_untrained", "tags"} & set(wanted):
        started = time.time()
        language_tags(tm, args, config, out)
        stage1_seconds = time.time() - started
    if "tags_untrained" in wanted:
        prepare_generative_tags(tm, template, data.train, config)  # <Translate> as stage 3 would start it
        results["trainable_params"]["tags_untrained"] = 0
        score("tags_untrained", tagged)
        tm.remove_tag(template.function_tag)  # the tags row trains it from the same start
    if "tags" in wanted:
        started = time.time()
        stage3 = TrainConfig(**{**config.to_dict(), "lr": args.tag_lr or args.lr})
        run = train_tagged_task(spec, data, tm, out / "translate", stage3, overwrite=True)
        results["trainable_params"]["tags"] = run["trainable_params"]
        results["trainable_params"]["tags_with_language_tags"] = sum(
            p.numel() for p in tm.tag_vectors.values()
        )
        results["train_seconds"]["tags"] = round(stage1_seconds + time.time() - started, 1)  # both stages
        score("tags", tagged)
    results["rows"] = {r: results["rows"][r] for r in ROWS if r in results["rows"]}  # resumed rows in order
    results.update(
        {
            "model": args.model,
            "flores_lines": len(subset),
            "flores_subset": f"{len(subset)} of 1012 devtest lines, random.Random({args.seed}).sample",
            "n_train_pairs": len(data.train),
            "notes": notes,
            "command": "python benchmarks/translation.py "
            + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        }
    )
    io.write_json(out / "translation.json", {**results, "settings": vars(args)})
    io.write_text(out / "translation.md", markdown(results))
    return results


def language_tags(tm: TaggedModel, args, config: TrainConfig, out: Path) -> None:
    """Stage 1: the language tags, loaded from `--stage1-tags` or trained on one side of Tatoeba."""
    stage1 = TrainConfig(**{**config.to_dict(), "stage": "domain", "epochs": args.stage1_epochs})
    for tag in STAGE1:
        if args.stage1_tags:
            tm.load_tags(Path(args.stage1_tags) / tag / "tags")
            continue
        corpus = CorpusSource(path=args.data, language=tag, limit=args.stage1_sentences)
        texts, skipped = corpus.read_counted()
        train_domain_tag(texts, tag, tm, out / "stage1" / tag, stage1, overwrite=True, skipped=skipped)


def language_shares(lid: LanguageIdentifier, texts: list[str], src: Language, tgt: Language) -> dict:
    """The fraction of translations in the target language, and in the source language (copies, mostly)."""
    shares = lid.shares(texts, src.tag, tgt.tag)
    return {"in_target": shares[tgt.tag], "in_source": shares[src.tag]}


def init_words() -> dict[str, str]:
    return {**{tag: f" {LANGUAGES[tag].name}" for tag in STAGE1}, "Translate": TRANSLATE_WORDS}


def finished_rows(path: Path, settings: dict, scored) -> dict | None:
    """The rows of an earlier run with the same settings that scored every direction (a partly scored row
    is redone); None without an earlier run. Rows and directions may be added; other changed settings stop
    the run rather than mix results."""
    if not path.is_file():
        return None
    earlier = io.read_json(path)
    # a resumed run may add rows or directions; the language ID only reads the outputs
    free = {"resume", "out", "rows", "directions", "langid_sentences"}
    defaults = vars(arguments(["--model", "", "--data", "", "--out", ""]))  # settings added since that run
    changed = sorted(
        k for k in settings if k not in free and earlier["settings"].get(k, defaults[k]) != settings[k]
    )
    if changed:
        raise SystemExit(
            f"{path} was made with other settings ({', '.join(changed)}): drop --resume or --out"
        )
    needed = {f"{s.tag}-{t.tag}" for s, t in scored}
    rows = {row: got for row, got in earlier["rows"].items() if needed <= set(got)}
    kept = set(rows) | ({"tags_with_language_tags"} if "tags" in rows else set())
    params, seconds = (
        {r: v for r, v in earlier[k].items() if r in kept} for k in ("trainable_params", "train_seconds")
    )
    return {"rows": rows, "trainable_params": params, "train_seconds": seconds}


def prompts(src: Language, tgt: Language, lines: list[str], examples=()) -> list[str]:
    """The base model asked in words; each answer is the line after the prompt."""
    head = f"Translate from {src.name} to {tgt.name}.\n"
    shown = "".join(f"{src.name}: {a}\n{tgt.name}: {b}\n\n" for a, b in examples)
    return [f"{head}{shown}{src.name}: {line}\n{tgt.name}:" for line in lines]


def shots(folder: Path, src: Language, tgt: Language, seed: int, k: int = 3) -> list[tuple[str, str]]:
    """k Tatoeba pairs src -> tgt; without an src-tgt file, joined on the English sentence both translate."""
    en = LANGUAGES["EN"]
    if en in (src, tgt):
        other = tgt if src == en else src
        rows = read_aligned(*pair_files(folder, en, other))
        pairs = [(a, b) if src == en else (b, a) for _, a, b in rows]
    else:
        by_english = {a: b for _, a, b in read_aligned(*pair_files(folder, en, src))}
        pairs = [
            (by_english[a], b) for _, a, b in read_aligned(*pair_files(folder, en, tgt)) if a in by_english
        ]
    pairs = [p for p in pairs if 20 <= len(p[0]) <= 120]  # whole sentences, short prompts
    return random.Random(seed).sample(pairs, min(k, len(pairs)))


def plain_words(fields: dict) -> str:
    return plain_prompt(LANGUAGES[fields["src"]].name, LANGUAGES[fields["tgt"]].name, fields["source"])


def markdown(results: dict) -> str:
    directions = list(next(iter(results["rows"].values()), {}))
    metrics = ["chrf", "bleu"] + (
        ["spbleu"] if any("spbleu" in d for r in results["rows"].values() for d in r.values()) else []
    )
    lines = [
        f"# Translation on FLORES-200 devtest ({results['model']})",
        "",
        f"`{results['command']}`",
        "",
        f"FLORES subset: {results['flores_subset']}. <Translate>, prompt tuning and LoRA trained on "
        f"{results['n_train_pairs']} Tatoeba examples (FLORES sentences excluded). chrF = chrF++.",
        *[f"\n{n}" for n in results["notes"]],
        "",
    ]
    for metric in metrics:
        lines += [f"## {metric}", "", "| row | trainable | " + " | ".join(directions) + " |"]
        lines.append("|---|---:|" + "---:|" * len(directions))
        for row, scores in results["rows"].items():
            trainable = results["trainable_params"].get(row, 0)
            values = [f"{scores[d].get(metric, float('nan')):.2f}" for d in directions]
            lines.append(f"| {row} | {trainable:,} | " + " | ".join(values) + " |")
        lines.append("")
    lines += ["## generation tokens/s", "", "| row | " + " | ".join(directions) + " |"]
    lines.append("|---|" + "---:|" * len(directions))
    for row, scores in results["rows"].items():
        lines.append(
            f"| {row} | " + " | ".join(f"{scores[d]['gen_tokens_per_s']:.1f}" for d in directions) + " |"
        )
    lines += [
        "",
        "## outputs in the target language (in the source language)",
        "",
        "Language of each output by a character n-gram classifier trained on Tatoeba (on these FLORES "
        "references it finds "
        + ", ".join(f"{t} {v:.0%}" for t, v in results.get("langid_on_references", {}).items())
        + ").",
        "",
        "| row | " + " | ".join(directions) + " |",
        "|---|" + "---:|" * len(directions),
    ]
    for row, scores in results["rows"].items():
        shares = [scores[d] for d in directions]
        lines.append(
            f"| {row} | "
            + " | ".join(
                f"{s['in_target']:.0%} ({s['in_source']:.0%})" if "in_target" in s else "n/a" for s in shares
            )
            + " |"
        )
    if "tags_with_language_tags" in results["trainable_params"]:
        lines += [
            "",
            f"Tags: {results['trainable_params']['tags']:,} trainable in stage 3 (<Translate>), "
            f"{results['trainable_params']['tags_with_language_tags']:,} with the stage-1 language tags.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
