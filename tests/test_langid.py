"""Language identification of generated text (domainlm.langid)."""

import pytest

from domainlm.errors import InputError
from domainlm.langid import LanguageIdentifier

EN = ["the cat is on the table", "where is the station", "I like the rain", "this is the house", "we eat now"]
FR = ["le chat est sur la table", "où est la gare", "j'aime la pluie", "c'est la maison", "nous mangeons"]


def test_tells_languages_apart_and_counts_empty_texts_as_none():
    lid = LanguageIdentifier({"EN": EN * 2, "FR": FR * 2})
    assert lid.predict(["the rain is on the house", "la pluie est sur la maison", " "]) == ["EN", "FR", None]
    assert lid.shares(["the table", "la table", ""], "EN", "FR") == {"EN": 1 / 3, "FR": 1 / 3}


def test_needs_two_languages_with_text():
    with pytest.raises(InputError, match="two or more languages"):
        LanguageIdentifier({"EN": EN})
    with pytest.raises(InputError, match=r"none for \['FR'\]"):
        LanguageIdentifier({"EN": EN, "FR": []})


def test_reads_a_tatoeba_folder(data_dir):
    lid = LanguageIdentifier.from_tatoeba(data_dir, ["EN", "DE"], per_language=300)
    assert lid.languages == ["DE", "EN"]
    assert lid.predict(["Ich habe heute keine Zeit.", "I have no time today."]) == ["DE", "EN"]
