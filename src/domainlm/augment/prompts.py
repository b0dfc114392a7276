"""Prompt templates for the teacher, one text file per generation mode.

A template file holds a `[system]` section and a `[user]` section (no markers: the whole file is the user
message). Fields in braces are filled from the training item: {question}, {context}, {label},
{long_answer}, {id}; literal braces are doubled (`{{` `}}`), as in Python's str.format.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from domainlm.errors import InputError
from domainlm.qa.data import QAItem

MODES = ("rewrite", "new")
FIELDS = ("question", "context", "label", "long_answer", "id")
_SECTION = re.compile(r"^\[(system|user)\][ \t]*$", re.M)


@dataclass(frozen=True)
class PromptTemplate:
    mode: str
    text: str
    path: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def sections(self) -> dict[str, str]:
        marks = list(_SECTION.finditer(self.text))
        if not marks:
            return {"user": self.text.strip()}
        out = {}
        for mark, nxt in zip(marks, [*marks[1:], None], strict=True):
            out[mark.group(1)] = self.text[mark.end() : nxt.start() if nxt else len(self.text)].strip()
        return out

    def messages(self, item: QAItem) -> list[dict[str, str]]:
        """Chat messages for one training item."""
        values = {name: getattr(item, name) for name in FIELDS}
        values["long_answer"] = item.long_answer or "(not given)"
        return [{"role": role, "content": body.format(**values)} for role, body in self.sections().items()]


def load_template(mode: str, prompt_dir: str | Path | None = None) -> PromptTemplate:
    """`<prompt_dir>/<mode>.txt` when given and present, else the packaged default."""
    if mode not in MODES:
        raise InputError(f"unknown prompt mode {mode!r}; choose from {list(MODES)}")
    user_file = Path(prompt_dir) / f"{mode}.txt" if prompt_dir is not None else None
    if prompt_dir is not None and not Path(prompt_dir).is_dir():
        raise InputError("prompt directory not found", source=str(prompt_dir))
    if user_file is not None and user_file.is_file():
        template = PromptTemplate(mode, user_file.read_text(encoding="utf-8"), str(user_file))
    else:
        packaged = resources.files("domainlm") / "prompts" / f"{mode}.txt"
        template = PromptTemplate(mode, packaged.read_text(encoding="utf-8"), f"domainlm/prompts/{mode}.txt")
    _check(template)
    return template


def _check(template: PromptTemplate) -> None:
    sections = template.sections()
    if not sections.get("user"):
        raise InputError("the template has no [user] text", source=template.path)
    for body in sections.values():
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(body) if name is not None}
        except ValueError as e:
            raise InputError(
                f"bad braces ({e}); write literal braces as {{{{ and }}}}", source=template.path
            ) from None
        unknown = sorted(names - set(FIELDS))
        if unknown:
            raise InputError(f"unknown field(s) {unknown}; available: {list(FIELDS)}", source=template.path)
