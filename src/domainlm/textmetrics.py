"""Translation scores from sacrebleu: BLEU (13a tokenisation), chrF++ (chrF with word bigrams) and, given a
local FLORES SentencePiece model, spBLEU (BLEU over its pieces, as FLORES reports)."""

from __future__ import annotations

from pathlib import Path

from domainlm.errors import InputError

SPBLEU_UNAVAILABLE = (
    "spBLEU not computed: it needs the FLORES SentencePiece model, which cannot be downloaded here; "
    "pass a local copy (--spm-model flores200_sacrebleu_tokenizer_spm.model)"
)


def translation_scores(hypotheses: list[str], references: list[str], spm_model=None) -> dict[str, float]:
    """{"bleu", "chrf"} (chrf = chrF++), and "spbleu" when `spm_model` names a SentencePiece model file."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise InputError(f"{len(hypotheses)} translations for {len(references)} references")
    if not hypotheses:
        return {}
    scores = {
        "bleu": BLEU().corpus_score(hypotheses, [references]).score,
        "chrf": CHRF(word_order=2).corpus_score(hypotheses, [references]).score,
    }
    if spm_model is not None:
        encode = sentencepiece_encoder(spm_model)
        pieces = BLEU(tokenize="none", force=True)
        scores["spbleu"] = pieces.corpus_score(
            [encode(h) for h in hypotheses], [[encode(r) for r in references]]
        ).score
    return scores


def sentencepiece_encoder(path):
    """text -> its pieces joined by spaces, with the SentencePiece model at `path`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"SentencePiece model not found; {SPBLEU_UNAVAILABLE}", source=str(path))
    try:
        import sentencepiece
    except ImportError:
        raise InputError("spBLEU needs the sentencepiece package: pip install sentencepiece") from None
    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    return lambda text: " ".join(processor.encode(text, out_type=str))
