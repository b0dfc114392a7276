"""Student models for domain QA (Dr. LLaMA): generative students (LoRA, prefix tuning on a causal LM) that
write "the answer to the question given the context is {label}.", and classification students (sequence
classification + LoRA, or a function tag) for encoders; training, evaluation and comparison tables."""

from domainlm.qa.students.config import StudentConfig

__all__ = ["StudentConfig", "compare_runs", "evaluate_run", "finetune"]


def __getattr__(name):
    # Lazy: the runner pulls in torch and transformers.
    if name in {"finetune", "evaluate_run"}:
        from domainlm.qa.students import runner

        return getattr(runner, name)
    if name == "compare_runs":
        from domainlm.qa.students.compare import compare_runs

        return compare_runs
    raise AttributeError(name)
