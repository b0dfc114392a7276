"""Which language a generated sentence is in, to tell a translation into the target language from a copy of
the source or a drift into a third language (chrF++ alone does not say which). A character n-gram
classifier (scikit-learn: tf-idf over 1-4 characters, logistic regression) trained on monolingual text, by
default one side of the Tatoeba pairs: offline, deterministic, seconds to train."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from domainlm.errors import InputError


class LanguageIdentifier:
    def __init__(self, texts: dict[str, Sequence[str]], seed: int = 0):
        """`texts`: language tag (FR) -> sentences in it; at least two languages."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        empty = [tag for tag, lines in texts.items() if not lines]
        if len(texts) < 2 or empty:
            raise InputError(
                f"language identification needs sentences in two or more languages; none for {empty}"
            )
        self.languages = sorted(texts)
        x = [line for tag in self.languages for line in texts[tag]]
        y = [tag for tag in self.languages for _ in texts[tag]]
        self._model = make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True, min_df=2),
            LogisticRegression(C=10.0, max_iter=1000, random_state=seed),
        )
        self._model.fit(x, y)

    @classmethod
    def from_tatoeba(
        cls, folder: str | Path, languages: Iterable[str], per_language: int = 2000, seed: int = 0
    ) -> LanguageIdentifier:
        """Trained on the first `per_language` sentences of each language's side of a Tatoeba folder (the
        data directory or its translation/tatoeba)."""
        from domainlm.corpus import CorpusSource

        texts = {tag: CorpusSource(path=folder, language=tag, limit=per_language).read() for tag in languages}
        return cls(texts, seed=seed)

    def predict(self, texts: Sequence[str]) -> list[str | None]:
        """Each text's language tag; None for an empty text."""
        kept = [i for i, text in enumerate(texts) if text.strip()]
        found: list[str | None] = [None] * len(texts)
        if kept:
            for i, tag in zip(kept, self._model.predict([texts[i] for i in kept])):
                found[i] = str(tag)
        return found

    def shares(self, texts: Sequence[str], *languages: str) -> dict[str, float]:
        """The fraction of `texts` identified as each of `languages` (an empty text counts as none)."""
        found = self.predict(texts)
        return {tag: sum(f == tag for f in found) / max(len(found), 1) for tag in languages}
