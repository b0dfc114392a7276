"""Teacher-generated training data (Dr. LLaMA): prompts, teachers, reply checks, cache and the pipeline."""

from domainlm.augment.pipeline import AugmentConfig, run_augment
from domainlm.augment.prompts import PromptTemplate, load_template
from domainlm.augment.replies import REASONS, extract_json, judge_reply, normalise
from domainlm.augment.reply_cache import Reply, ReplyCache, request_key
from domainlm.augment.teachers import HFTeacher, OpenAITeacher, TeacherError, make_teacher

__all__ = [
    "REASONS",
    "AugmentConfig",
    "HFTeacher",
    "OpenAITeacher",
    "PromptTemplate",
    "Reply",
    "ReplyCache",
    "TeacherError",
    "extract_json",
    "judge_reply",
    "load_template",
    "make_teacher",
    "normalise",
    "request_key",
    "run_augment",
]
