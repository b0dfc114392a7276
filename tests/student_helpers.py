"""Shared by the student tests: three QA items, tiny saved models, QA data directories, configs."""

import torch

from domainlm.qa import QAItem, write_qa_jsonl
from domainlm.qa.students import StudentConfig
from tiny_models import tiny_model

ITEMS = [
    QAItem(
        "a",
        "is the drug binding the protein ?",
        "the drug affinity is a score of the protein",
        "yes",
        long_answer="the binding affinity is quantitative",
    ),
    QAItem("b", "is the molecule a protein ?", "the molecule is a smiles sequence", "no"),
    QAItem("c", "is the score given ?", "the score is maybe given in the context", "maybe"),
]


def save_tiny(path, family, **config_kw):
    """A tiny random model saved like a real checkpoint. Causal LMs get a sharpened output layer: with the
    default 0.02-scale init a frozen head can only move logits by a fraction of a nat, so no adapter could
    show that it learns."""
    model, tokenizer = tiny_model(family, **config_kw)
    if family != "bert":
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(25)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def write_qa_dir(path, items=ITEMS, extra_train=()):
    """train/dev/test.jsonl holding `items` (ids prefixed by split), plus `extra_train` (generated items)."""
    for split in ("train", "dev", "test"):
        rows = [QAItem(**{**item.__dict__, "id": f"{split}-{item.id}"}) for item in items]
        write_qa_jsonl(path / f"{split}.jsonl", [*rows, *(extra_train if split == "train" else ())])
    return str(path)


def student_config(model, method="lora", **kw):
    """A StudentConfig for tiny models and three items; keyword arguments override the defaults."""
    settings = dict(
        method=method,
        model=model,
        data="unused",
        max_length=64,
        max_answer_tokens=24,
        lora_rank=8,
        lora_dropout=0.0,
        lr=2e-2,
        batch_size=3,
        grad_accum=1,
        warmup_ratio=0.0,
        epochs=30,
        save_every=0,
        eval_batch_size=4,
    )
    return StudentConfig(**{**settings, **kw})
