"""Translation with language tags (Tag-LLM stage 3): Tatoeba pairs to train on, FLORES-200 devtest to score.

The preset `translation` reads the Tatoeba pairs of the chosen directions (default EN<->FR, EN<->DE,
EN<->IT) into the paper's template `Input: <SRC> {source} Output: <TGT> <Translate> {target}`, written
`<{src}>` / `<{tgt}>` here because each row names its own language tags. `<Translate>` is a generative
function tag: no head, the loss covers the target tokens only, and the LM head writes the translation.

The split is seeded and made per sentence pair (both directions of a pair fall in the same split); pairs
with a side among the FLORES devtest sentences are dropped, counted, so evaluation never sees training text.
Tatoeba files are line-aligned `xxx-yyy.xxx` / `xxx-yyy.yyy` (codes in alphabetical order); files of other
suffixes in the folder (`eng-fra.src`, an empty stray) are never read.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from domainlm.errors import InputError
from domainlm.tasks.base import Example, TaskData, TaskSpec, register_task
from domainlm.tasks.common import dataset_dir_with, limit_examples

TEMPLATE = "Input: <{src}> {source} Output: <{tgt}> <Translate> {target}"
DEFAULT_DIRECTIONS = "en-fr,fr-en,en-de,de-en,en-it,it-en"
TATOEBA = "translation/tatoeba"
FLORES = "translation/flores200_devtest"


@dataclass(frozen=True)
class Language:
    tag: str  # the language tag, <FR>
    code: str  # Tatoeba's ISO 639-3 code, fra
    flores: str  # the FLORES-200 file stem, fra_Latn
    name: str  # in words, for prompts without tags


LANGUAGES = {
    lang.tag: lang
    for lang in (
        Language("EN", "eng", "eng_Latn", "English"),
        Language("FR", "fra", "fra_Latn", "French"),
        Language("DE", "deu", "deu_Latn", "German"),
        Language("IT", "ita", "ita_Latn", "Italian"),
        Language("ES", "spa", "spa_Latn", "Spanish"),
        Language("PT", "por", "por_Latn", "Portuguese"),
        Language("CA", "cat", "cat_Latn", "Catalan"),
        Language("EL", "ell", "ell_Grek", "Greek"),
        Language("RU", "rus", "rus_Cyrl", "Russian"),
    )
}


def language(name: str) -> Language:
    """A language by tag (FR, fr) or Tatoeba code (fra)."""
    key = name.strip()
    for lang in LANGUAGES.values():
        if key.upper() == lang.tag or key.lower() == lang.code:
            return lang
    known = ", ".join(f"{lang.tag} ({lang.code})" for lang in LANGUAGES.values())
    raise InputError(f"unknown language {name!r}; known: {known}")


def parse_directions(text: str | list) -> list[tuple[Language, Language]]:
    """ "en-fr,fr-en" (or a list of such) -> [(EN, FR), (FR, EN)]."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        src, sep, tgt = str(item).strip().partition("-")
        if not sep or not src or not tgt:
            raise InputError(f"a direction looks like en-fr, got {item!r}")
        pair = (language(src), language(tgt))
        if pair[0] == pair[1]:
            raise InputError(f"direction {item!r} translates a language into itself")
        if pair not in out:
            out.append(pair)
    if not out:
        raise InputError("no translation directions given")
    return out


# ---- files -------------------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError("file not found", source=str(path))
    return path.read_text(encoding="utf-8").splitlines()


def read_aligned(path_a: Path, path_b: Path, skipped: Counter | None = None) -> list[tuple[int, str, str]]:
    """(1-based line, a, b) of two line-aligned files; a line empty on either side is skipped, counted in
    `skipped["empty"]`. Files of different lengths are refused, naming both and their counts."""
    a, b = read_lines(path_a), read_lines(path_b)
    if len(a) != len(b):
        raise InputError(
            f"unaligned files: {path_a} has {len(a)} lines but {path_b} has {len(b)}; a parallel corpus "
            "holds one sentence a line, line n of one translating line n of the other"
        )
    out = []
    for n, (x, y) in enumerate(zip(a, b), start=1):
        if not x.strip() or not y.strip():
            if skipped is not None:
                skipped["empty"] += 1
            continue
        out.append((n, x.strip(), y.strip()))
    return out


def tatoeba_dir(data_dir) -> Path:
    """The Tatoeba folder: `data_dir` itself when it holds pair files, else data_dir/translation/tatoeba."""
    return dataset_dir_with(data_dir, TATOEBA, "*-*.*", "Tatoeba pair files (xxx-yyy.xxx)")


def pair_files(folder: Path, a: Language, b: Language) -> tuple[Path, Path]:
    """The files holding a's and b's sides of the a-b pair (the stem lists the codes alphabetically)."""
    first, second = sorted([a.code, b.code])
    stem = folder / f"{first}-{second}"
    files = (Path(f"{stem}.{a.code}"), Path(f"{stem}.{b.code}"))
    if not all(f.is_file() for f in files):
        available = sorted({p.stem for p in folder.glob("*-*.*")})
        raise InputError(
            f"no Tatoeba pair {a.tag}-{b.tag}: expected {files[0].name} and {files[1].name} in {folder}; "
            f"pairs there: {', '.join(available)}"
        )
    return files


def monolingual_files(folder: Path, code: str) -> list[Path]:
    """Every pair file's side in language `code` (`eng-fra.eng`, `deu-eng.eng`, ...), sorted. Only files
    whose suffix is one of the two codes in their stem count, so a stray `eng-fra.src` is never read."""
    out = []
    for path in sorted(folder.glob(f"*.{code}")):
        codes = path.stem.split("-")
        if len(codes) == 2 and code in codes:
            out.append(path)
    return out


def read_monolingual(folder: Path, name: str, skipped: Counter) -> list[str]:
    """Stage 1 text for one language: its side of every Tatoeba pair holding it, each sentence once
    (Tatoeba repeats a sentence for each of its translations); empty lines and repeats are counted."""
    code = language(name).code if _is_known(name) else name.lower()
    files = monolingual_files(folder, code)
    if not files:
        raise InputError(f"no Tatoeba file in language {code!r} (xxx-yyy.{code}) in {folder}")
    seen, texts = set(), []
    for path in files:
        for line in read_lines(path):
            text = line.strip()
            if not text:
                skipped["empty"] += 1
            elif text in seen:
                skipped["duplicate"] += 1
            else:
                seen.add(text)
                texts.append(text)
    return texts


def _is_known(name: str) -> bool:
    try:
        language(name)
    except InputError:
        return False
    return True


def flores_dir(data_dir) -> Path:
    return dataset_dir_with(data_dir, FLORES, "*.devtest", "FLORES devtest files (*.devtest)")


def flores_lines(folder: Path, lang: Language) -> list[str]:
    path = folder / f"{lang.flores}.devtest"
    if not path.is_file():
        raise InputError(f"no FLORES devtest file for {lang.tag} ({path.name})", source=str(folder))
    return [line.strip() for line in read_lines(path)]


def flores_subset(n_lines: int, size: int | None, seed: int) -> list[int]:
    """A fixed, seeded subset of FLORES line indices (sorted), or every line."""
    if size is None or size >= n_lines:
        return list(range(n_lines))
    return sorted(random.Random(seed).sample(range(n_lines), size))


# ---- the preset -------------------------------------------------------------------------------------------


def translation_example(src: Language, tgt: Language, source: str, target: str, id: str) -> Example:
    """One direction of a sentence pair; the label is the reference translation."""
    fields = {"src": src.tag, "tgt": tgt.tag, "source": source, "target": target}
    return Example(id, fields, target, group=f"{src.tag}-{tgt.tag}")


def load_translation(
    data_dir,
    spec: TaskSpec,
    directions: str | list = DEFAULT_DIRECTIONS,
    val_size: int = 100,
    test_size: int = 100,
    max_chars: int | None = 300,
    seed: int = 0,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    multiway: bool = False,
) -> TaskData:
    """Tatoeba pairs of `directions`, split per sentence pair by `seed`: `test_size` and `val_size` pairs per
    language pair held out, the rest trains. Pairs over `max_chars` on a side, or with a side in FLORES
    devtest, are dropped, counted. `multiway`: the training examples are first those of English sentences
    translated into two or more other languages, each with all its directions (see `multiway_first`)."""
    pairs = parse_directions(directions)
    folder = tatoeba_dir(data_dir)
    flores = _flores_sentences(data_dir, {lang for pair in pairs for lang in pair})
    skipped: Counter = Counter()
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    unordered = list(dict.fromkeys(tuple(sorted(p, key=lambda lang: lang.code)) for p in pairs))
    for a, b in unordered:
        file_a, file_b = pair_files(folder, a, b)
        rows = []
        for n, x, y in read_aligned(file_a, file_b, skipped):
            if max_chars and max(len(x), len(y)) > max_chars:
                skipped["too_long"] += 1
            elif x in flores or y in flores:
                skipped["in_flores"] += 1
            else:
                rows.append((n, x, y))
        random.Random(f"{seed}-{a.code}-{b.code}").shuffle(rows)
        held = {"test": rows[:test_size], "val": rows[test_size : test_size + val_size]}
        held["train"] = rows[test_size + val_size :]
        for name, chunk in held.items():
            for n, x, y in chunk:
                for src, tgt, s, t in ((a, b, x, y), (b, a, y, x)):
                    if (src, tgt) in pairs:
                        example_id = f"{file_a.stem}:{n}:{src.tag}"
                        splits[name].append(translation_example(src, tgt, s, t, example_id))
    if multiway:
        train = multiway_first(splits["train"], seed)[:limit_train]
    else:
        train = limit_examples(splits["train"], limit_train, seed)
    val = limit_examples(splits["val"], limit_eval, seed)
    test = limit_examples(splits["test"], limit_eval, seed)
    info = {
        "source": str(folder),
        "directions": [f"{s.tag}-{t.tag}" for s, t in pairs],
        "split": f"per sentence pair, seed {seed}; FLORES devtest sentences excluded",
        **({"train_order": "multi-way English sentences first"} if multiway else {}),
    }
    return TaskData(train, val, test, skipped, info)


def multiway_first(examples: list[Example], seed: int) -> list[Example]:
    """The examples grouped by their English side, groups whose sentence is translated into two or more other
    languages first (each group whole, groups in seeded random order), then the rest. When one English
    sentence is asked for in French, German and Italian, nothing in its wording tells the outputs apart:
    only the target language tag does. A `limit_train` cut may end inside a group, keeping some of its
    directions: the count asked for is the count trained on."""
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        f = ex.fields
        english = f["source"] if f["src"] == "EN" else f["target"] if f["tgt"] == "EN" else None
        groups.setdefault(english if english is not None else ex.id, []).append(ex)

    def languages(group: list[Example]) -> int:
        return len({ex.fields["tgt"] if ex.fields["src"] == "EN" else ex.fields["src"] for ex in group})

    keys = list(groups)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda key: languages(groups[key]) < 2)  # stable: the shuffle holds within each part
    return [ex for key in keys for ex in groups[key]]


def _flores_sentences(data_dir, languages) -> set[str]:
    try:
        folder = flores_dir(data_dir)
    except InputError:
        return set()  # no FLORES here: nothing to keep out
    out = set()
    for lang in languages:
        if (folder / f"{lang.flores}.devtest").is_file():
            out.update(flores_lines(folder, lang))
    return out


TRANSLATION = register_task(
    TaskSpec(
        name="translation",
        template=TEMPLATE,
        head="generation",
        metrics=("chrf", "bleu"),
        primary_metric="lm_loss",  # selection on the validation targets' loss: generating is slow
        loader=load_translation,
        description="Tatoeba translation with language tags and a generative <Translate> tag",
        defaults={"epochs": 1},
        paper_reference="spBLEU on FLORES-101 (LLaMA-7B): EN-FR 40.5, FR-EN 45.7, EN-DE 23.0, DE-EN 40.5; "
        "zero-shot IT-FR 28.8, ES-PT 24.6",
    )
)
