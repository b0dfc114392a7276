"""What a QA student trains and what its loss is, for `domainlm.training.fit`. The dev loss selects: the
adapter weights at the best dev loss are the ones a run keeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from domainlm import distributed
from domainlm.training import TrainableMethod, TrainResult, fit


class StudentTraining(TrainableMethod):
    """A student's trainable weights on its encoded training examples, with the student's own loss."""

    def __init__(self, student, features: list[dict]):
        self.student, self.module, self.features = student, student.model, features
        self.n_examples = len(features)
        self.lengths = [student.n_tokens(f) for f in features]

    def tokens(self, batch: list[int]) -> int:
        return sum(self.lengths[i] for i in batch)

    def memory_plan(self):
        model = self.student.model
        return getattr(model, "base", model).config, self.lengths  # a tag student's model is a TaggedModel

    def loss(self, batch: list[int]) -> torch.Tensor:
        return self.student.loss(self.student.collate([self.features[i] for i in batch]))


@torch.no_grad()
def mean_loss(student, features: list[dict], batch_size: int) -> float:
    """Example-weighted mean loss over `features` (teacher-forced for generative students); under several
    processes each sums its shard."""
    student.model.eval()
    mine = distributed.shard(len(features))
    total = 0.0
    for start in range(0, len(mine), batch_size):
        chunk = [features[i] for i in mine[start : start + batch_size]]
        total += student.loss(student.collate(chunk)).item() * len(chunk)
    (total,) = distributed.sum_across([total])
    return total / len(features)


def train_student(
    student,
    train: list[dict],
    dev: list[dict],
    config,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `student` in place on encoded `train` features; the dev loss (`val_loss` in the history) is
    computed once an epoch, and the weights at its lowest are restored at the end."""

    def validate() -> dict:
        return {"loss": mean_loss(student, dev, config.eval_batch_size)}

    return fit(
        StudentTraining(student, train),
        config.loop(),
        validate=validate if dev else None,
        select="loss",
        checkpoint=checkpoint,
        resume=resume,
        log=log,
    )
