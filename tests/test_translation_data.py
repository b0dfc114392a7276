"""Translation data: Tatoeba pairs and sides, FLORES kept out of training, and the messages bad files get."""

from collections import Counter

import pytest

from domainlm.corpus import CorpusSource
from domainlm.errors import InputError
from domainlm.tasks import get_task
from domainlm.tasks.translation import (
    language,
    monolingual_files,
    parse_directions,
    read_aligned,
    read_monolingual,
)


def tatoeba(tmp_path, pairs: dict[str, tuple[list[str], list[str]]]):
    folder = tmp_path / "translation" / "tatoeba"
    folder.mkdir(parents=True)
    for stem, (a, b) in pairs.items():
        x, y = stem.split("-")
        (folder / f"{stem}.{x}").write_text("\n".join(a) + "\n")
        (folder / f"{stem}.{y}").write_text("\n".join(b) + "\n")
    return folder


def test_unaligned_files_name_both_files_and_counts(tmp_path):
    folder = tatoeba(tmp_path, {"eng-fra": (["a", "b", "c"], ["x", "y"])})
    with pytest.raises(InputError) as e:
        read_aligned(folder / "eng-fra.eng", folder / "eng-fra.fra")
    message = str(e.value)
    assert "eng-fra.eng has 3 lines" in message and "eng-fra.fra has 2" in message


def test_empty_lines_are_skipped_and_counted(tmp_path):
    eng, fra = ["Hello.", "", "Thanks.", "Yes."], ["Bonjour.", "Rien.", "", "Oui."]
    folder = tatoeba(tmp_path, {"eng-fra": (eng, fra)})
    skipped = Counter()
    rows = read_aligned(folder / "eng-fra.eng", folder / "eng-fra.fra", skipped)
    assert rows == [(1, "Hello.", "Bonjour."), (4, "Yes.", "Oui.")] and skipped["empty"] == 2
    (folder / "eng-fra.src").write_text("")  # the stray file of the shared data
    assert monolingual_files(folder, "eng") == [folder / "eng-fra.eng"]
    skipped = Counter()
    assert read_monolingual(folder, "FR", skipped) == ["Bonjour.", "Rien.", "Oui."] and skipped["empty"] == 1


def test_the_shared_stray_file_does_not_trip_the_loader(data_dir):
    folder = data_dir / "translation" / "tatoeba"
    assert (folder / "eng-fra.src").is_file()
    assert folder / "eng-fra.src" not in monolingual_files(folder, "eng")
    assert len(monolingual_files(folder, "eng")) == 8


def test_the_preset_split_is_seeded_per_pair_and_keeps_flores_out(tmp_path):
    eng = [f"Sentence {i}." for i in range(30)]
    fra = [f"Phrase {i}." for i in range(30)]
    folder = tatoeba(tmp_path, {"eng-fra": (eng, fra)})
    flores = folder.parent / "flores200_devtest"
    flores.mkdir()
    (flores / "eng_Latn.devtest").write_text("Sentence 3.\nSomething else.\n")
    (flores / "fra_Latn.devtest").write_text("Autre.\nPhrase 7.\n")
    spec = get_task("translation")
    data = spec.load(tmp_path, directions="en-fr,fr-en", val_size=4, test_size=5)
    assert data.skipped["in_flores"] == 2
    assert (len(data.train), len(data.val), len(data.test)) == (2 * 19, 2 * 4, 2 * 5)
    pair_ids = {name: {ex.id.rsplit(":", 1)[0] for ex in exs} for name, exs in data.splits().items()}
    assert not pair_ids["train"] & pair_ids["test"] and not pair_ids["val"] & pair_ids["test"]
    sources = {ex.fields["source"] for exs in data.splits().values() for ex in exs}
    assert "Sentence 3." not in sources and "Phrase 7." not in sources
    ex = next(e for e in data.test if e.fields["src"] == "FR")
    assert ex.fields["tgt"] == "EN" and ex.label == ex.fields["target"]
    again = spec.load(tmp_path, directions="en-fr,fr-en", val_size=4, test_size=5)
    assert [e.id for e in again.test] == [e.id for e in data.test]


def test_languages_and_directions():
    assert language("fr") == language("fra") == language("FR")
    assert [(s.tag, t.tag) for s, t in parse_directions("en-fr,it-fr")] == [("EN", "FR"), ("IT", "FR")]
    with pytest.raises(InputError, match="unknown language 'xx'; known: EN"):
        parse_directions("xx-fr")
    with pytest.raises(InputError, match="looks like en-fr"):
        parse_directions("enfr")


def test_stage1_reads_one_side_of_a_tatoeba_folder(tmp_path):
    tatoeba(tmp_path, {"eng-fra": (["Hi.", "Hi.", ""], ["Salut.", "Coucou.", "Bof."])})
    corpus = CorpusSource(path=str(tmp_path), language="en")
    texts, skipped = corpus.read_counted()
    assert corpus.tag == "EN" and texts == ["Hi."] and skipped == Counter(empty=1, duplicate=1)
    plain = tmp_path / "plain.txt"
    plain.write_text("one\n\n  \ntwo\n")
    assert CorpusSource(path=str(plain), tag="XX").read_counted() == (["one", "two"], Counter(empty=2))


def test_multiway_training_puts_english_sentences_with_several_targets_first_and_whole(tmp_path):
    shared = [f"Shared {i}." for i in range(6)]  # translated into French and German
    only_fr = [f"French only {i}." for i in range(6)]
    tatoeba(
        tmp_path,
        {
            "eng-fra": (shared + only_fr, [f"Fr {s}" for s in shared + only_fr]),
            "deu-eng": ([f"De {s}" for s in shared], shared),
        },
    )
    spec = get_task("translation")
    options = dict(directions="en-fr,fr-en,en-de,de-en", val_size=0, test_size=0, seed=3)
    data = spec.load(tmp_path, multiway=True, limit_train=12, **options)
    english = [ex.fields["source"] if ex.fields["src"] == "EN" else ex.fields["target"] for ex in data.train]
    assert len(english) == 12 and set(english) <= set(shared)  # 3 sentences x 4 directions, nothing else
    assert all(english[i] == english[i + 3] for i in range(0, 12, 4))  # each sentence's directions together
    full = spec.load(tmp_path, multiway=True, **options)  # no limit: every example, multi-way ones first
    assert len(full.train) == len(spec.load(tmp_path, **options).train) == 6 * 4 + 6 * 2
