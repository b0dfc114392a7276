"""Published PubMedQA figures (Dr. LLaMA, Guo et al. 2023; the PubMedQA leaderboard, Jin et al. 2019) shown
beside our runs in comparison tables.

`split` says what each was measured on: the official 500-item test set, or the Dr. LLaMA paper's own split
(file items 500-999), whose numbers are not leaderboard-comparable."""

PUBLISHED = [
    {"system": "majority class (yes)", "split": "official test", "accuracy": 0.552, "macro_f1": 0.237},
    {
        "system": "BioGPT-Large 1.6B, LoRA, no augmentation",
        "split": "paper test",
        "accuracy": 0.638,
        "macro_f1": 0.391,
    },
    {
        "system": "BioGPT-Large 1.6B, LoRA, GPT-4 newQA",
        "split": "paper test",
        "accuracy": 0.754,
        "macro_f1": 0.520,
    },
    {
        "system": "LLaMA-7B, LoRA, GPT-3.5 rewriteQA",
        "split": "paper test",
        "accuracy": 0.642,
        "macro_f1": 0.497,
    },
    {"system": "GPT-4 0-shot", "split": "official test", "accuracy": 0.752, "macro_f1": None},
    {"system": "GPT-4 5-shot", "split": "official test", "accuracy": 0.744, "macro_f1": None},
    {"system": "human", "split": "official test", "accuracy": 0.780, "macro_f1": 0.722},
    {"system": "MediSwift-XL 1.2B", "split": "official test", "accuracy": 0.768, "macro_f1": None},
    {"system": "BioLinkBERT-large 340M", "split": "official test", "accuracy": 0.722, "macro_f1": None},
    {"system": "BioBERT 110M", "split": "official test", "accuracy": 0.681, "macro_f1": None},
]
SOURCE = (
    "Dr. LLaMA (Guo et al., 2023, arXiv:2305.07804) and the PubMedQA leaderboard "
    "(Jin et al., EMNLP 2019; pubmedqa.github.io)"
)
