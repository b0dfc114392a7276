"""Resolved settings of a student run (saved as the run's config.yaml) and of answer generation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from domainlm.errors import InputError
from domainlm.qa.students.prompt_fit import KEEP

CLASS_WEIGHTS = ("none", "balanced")


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class StudentConfig:
    """Every choice a student run makes; rules that tie fields together are checked at construction."""

    method: str = _opt(
        "lora",
        "student method: lora | prefix (generative, causal LM) or seqcls-lora | tag "
        "(3-way classifier, any encoder or decoder)",
    )
    model: str = _opt("", "base model: a local directory, a Hugging Face hub id, or the alias 'minilm'")
    data: str = _opt("", "QA directory with train/dev/test.jsonl, or the PubMedQA data directory")
    split: str = _opt("official", "PubMedQA split when --data is the PubMedQA directory: official | paper")
    fold: int = _opt(0, "PubMedQA official split: the cross-validation fold used as dev (0-9)")
    epochs: int = _opt(3, "passes over the training set")
    lr: float = _opt(5e-5, "peak learning rate (AdamW, linear warm-up then linear decay)")
    batch_size: int = _opt(1, "examples per forward pass")
    grad_accum: int = _opt(32, "forward passes per optimizer step (the paper accumulates 32)")
    warmup_ratio: float = _opt(0.03, "fraction of optimizer steps spent warming the learning rate up")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "gradient norm each optimizer step is clipped to")
    lora_rank: int = _opt(4, "LoRA rank r")
    lora_alpha: float = _opt(16, "LoRA scaling alpha (the paper sweeps 16..512)")
    lora_dropout: float = _opt(0.05, "dropout on the LoRA input")
    target_modules: list[str] | None = _opt(
        None, "modules LoRA adapts; default: the attention q/k/v/o projections of the model's family"
    )
    num_virtual_tokens: int = _opt(16, "prefix tuning: virtual tokens per layer (the paper sweeps 16..512)")
    tag_length: int = _opt(10, "tag method: vectors in the function tag")
    max_length: int = _opt(512, "most tokens per example; the context is cut to fit, never the question")
    keep_context: str = _opt(
        "start",
        "which part of a context too long for --max-length is kept: start (cut the end; the paper's "
        "truncation) or end (cut the start; PubMedQA's results paragraphs come last)",
    )
    max_answer_tokens: int = _opt(
        128, "generative students: tokens kept for the target answer and generated at evaluation"
    )
    long_answer: bool = _opt(
        True,
        "generative students: write the long answer before the answer sentence (the paper); off: the "
        "sentence alone, so the prompt keeps more context and likelihood scoring needs no generation",
    )
    class_weight: str = _opt(
        "none",
        "classifier students: none, or balanced (each answer weighs n / (3 x its training count) in the "
        "loss, dev loss included, so the rare 'maybe' is not ignored; macro-F1 weighs the answers alike)",
    )
    seed: int = _opt(0, "seed for adapter initialisation, data order and dropout")
    limit: int | None = _opt(None, "use only the first N items of each split (for trials)")
    save_every: int = _opt(50, "optimizer steps between checkpoints (0: only at the end of each epoch)")
    eval_batch_size: int = _opt(8, "examples per batch at evaluation")
    device: str = _opt("auto", "auto | cpu | cuda")

    def __post_init__(self):
        from domainlm.qa.students.student import method_names

        if self.method not in method_names():
            raise InputError(f"unknown method {self.method!r}; choose from {method_names()}")
        if not self.model:
            raise InputError("no base model given (--model)")
        positive = (
            "epochs",
            "batch_size",
            "grad_accum",
            "lora_rank",
            "num_virtual_tokens",
            "tag_length",
            "max_length",
            "max_answer_tokens",
            "eval_batch_size",
        )
        bad = [f"{name}={getattr(self, name)}" for name in positive if getattr(self, name) < 1]
        for name in ("lr", "max_grad_norm"):
            if getattr(self, name) <= 0:
                bad.append(f"{name}={getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            bad.append(f"warmup_ratio={self.warmup_ratio}")
        if self.limit is not None and self.limit < 1:
            bad.append(f"limit={self.limit}")
        if bad:
            raise InputError(f"invalid setting(s): {', '.join(bad)}")
        if self.keep_context not in KEEP:
            raise InputError(f"keep_context must be one of {', '.join(KEEP)}, got {self.keep_context!r}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise InputError(
                f"class_weight must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weight!r}"
            )
        if self.class_weight != "none" and self.method in {"lora", "prefix"}:
            raise InputError(
                f"class_weight {self.class_weight} is for classifier students (seqcls-lora, tag); a "
                f"{self.method} student writes its answer as text"
            )
        if self.device not in {"auto", "cpu", "cuda"}:
            raise InputError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.method in {"lora", "prefix"} and self.max_answer_tokens >= self.max_length:
            raise InputError(
                f"max_answer_tokens ({self.max_answer_tokens}) must be below max_length "
                f"({self.max_length}): the prompt needs room"
            )

    def loop(self):
        """Settings of `domainlm.training.fit`: linear warm-up and decay, the dev loss once an epoch."""
        from domainlm.training import LoopSettings

        shared = {f.name: getattr(self, f.name) for f in fields(LoopSettings) if hasattr(self, f.name)}
        return LoopSettings(**shared, schedule="linear", evals_per_epoch=1, checkpoint_every=self.save_every)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


ANSWER_SCORING = ("parse", "likelihood")


@dataclass(frozen=True)
class Decoding:
    """How a generative student answers. The paper: beam search 5, repetition penalty 2.0, temperature 0.8,
    and the label parsed from the generated text (`answer_scoring="parse"`). Temperature only acts when
    sampling; transformers' repetition penalty also counts the prompt's tokens, so it works against repeating
    words of the question in the answer sentence. `answer_scoring="likelihood"`: after the generated text's
    rationale, the label whose answer sentence is most probable wins (`likelihood.py`), so no answer fails
    to parse."""

    num_beams: int = 5
    repetition_penalty: float = 2.0
    temperature: float = 0.8
    do_sample: bool = False
    answer_scoring: str = "parse"  # parse | likelihood

    @classmethod
    def greedy(cls) -> Decoding:
        return cls(num_beams=1, repetition_penalty=1.0, do_sample=False)

    def __post_init__(self):
        if self.num_beams < 1 or self.repetition_penalty <= 0 or self.temperature <= 0:
            raise InputError(f"invalid decoding settings: {self}")
        if self.answer_scoring not in ANSWER_SCORING:
            raise InputError(
                f"answer scoring must be one of {list(ANSWER_SCORING)}, got {self.answer_scoring!r}"
            )

    @property
    def name(self) -> str:
        if self.answer_scoring == "likelihood":
            return "likelihood"
        if self.num_beams == 1 and self.repetition_penalty == 1.0 and not self.do_sample:
            return "greedy"
        sampled = f"-sample-t{self.temperature:g}" if self.do_sample else ""
        return f"beam{self.num_beams}-rp{self.repetition_penalty:g}{sampled}"

    def generate_kwargs(self) -> dict:
        """Arguments of `generate`: every setting, the temperature only when sampling (where it acts)."""
        kw = asdict(self)
        del kw["answer_scoring"]
        if not self.do_sample:
            del kw["temperature"]
        return kw
