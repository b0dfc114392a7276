"""Teacher-generated training data (Dr. LLaMA): prompts, teachers, reply checks, cache and the pipeline."""

from domainlm.augment.pipeline import AugmentConfig, run_augment
from domainlm.augment.replies import extract_json, judge_reply
from domainlm.augment.teachers import HFTeacher, make_teacher

__all__ = ["AugmentConfig", "HFTeacher", "extract_json", "judge_reply", "make_teacher", "run_augment"]
