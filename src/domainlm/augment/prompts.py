"""Prompt templates for the teacher, one text file per generation mode.

A chat template holds a `[system]` and a `[user]` section (no markers: the whole file is the user message)
and is sent as chat messages. A completion template holds a `[prompt]` section, a raw text the teacher
continues (the completions API: few-shot prompts for base models, which follow a pattern far better than
an instruction), and optionally a `[stop]` section: one JSON string per line, each a stop sequence.
Fields in braces are filled from the training item: {question}, {context}, {label}, {long_answer}, {id};
literal braces are doubled (`{{` `}}`), as in Python's str.format.

Packaged styles: `chat` (JSON replies, for instruction models) and `fewshot` (completion templates whose
examples show the "Question: / Answer: / Final decision:" layout, for base models).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from domainlm.errors import InputError
from domainlm.qa.data import QAItem

MODES = ("rewrite", "new")
STYLES = ("chat", "fewshot")
FIELDS = ("question", "context", "label", "long_answer", "id")
_SECTION = re.compile(r"^\[(system|user|prompt|stop)\][ \t]*$", re.M)


@dataclass(frozen=True)
class PromptTemplate:
    mode: str
    text: str
    path: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def _spans(self) -> dict[str, tuple[int, int]]:
        """Each section's body as (start, end) offsets into the text."""
        marks = list(_SECTION.finditer(self.text))
        ends = [m.start() for m in marks[1:]] + [len(self.text)] * bool(marks)
        return {mark.group(1): (mark.end(), end) for mark, end in zip(marks, ends, strict=True)}

    def sections(self) -> dict[str, str]:
        spans = self._spans()
        if not spans:
            return {"user": self.text.strip()}
        return {name: self.text[start:end].strip() for name, (start, end) in spans.items()}

    @property
    def stop(self) -> tuple[str, ...]:
        if "stop" not in (spans := self._spans()):
            return ()
        start, end = spans["stop"]
        # the body starts on the [stop] line itself: its first line there has the marker's number
        return _stops(self.text[start:end], self.text.count("\n", 0, start) + 1, self.path)

    def render(self, item: QAItem) -> list[dict[str, str]] | str:
        """What the teacher is sent for one training item: chat messages, or a completion template's text."""
        values = {name: getattr(item, name) for name in FIELDS}
        values["long_answer"] = item.long_answer or "(not given)"
        sections = self.sections()
        if "prompt" in sections:
            return sections["prompt"].format(**values)
        return [{"role": role, "content": body.format(**values)} for role, body in sections.items()]


def load_template(mode: str, prompt_dir: str | Path | None = None, style: str = "chat") -> PromptTemplate:
    """`<prompt_dir>/<mode>.txt` when given and present, else the packaged template of that style."""
    if mode not in MODES:
        raise InputError(f"unknown prompt mode {mode!r}; choose from {list(MODES)}")
    if style not in STYLES:
        raise InputError(f"unknown prompt style {style!r}; choose from {list(STYLES)}")
    user_file = Path(prompt_dir) / f"{mode}.txt" if prompt_dir is not None else None
    if prompt_dir is not None and not Path(prompt_dir).is_dir():
        raise InputError("prompt directory not found", source=str(prompt_dir))
    if user_file is not None and user_file.is_file():
        template = PromptTemplate(mode, user_file.read_text(encoding="utf-8"), str(user_file))
    else:
        name = f"{mode}.txt" if style == "chat" else f"{style}/{mode}.txt"
        packaged = resources.files("domainlm") / "prompts" / name
        template = PromptTemplate(mode, packaged.read_text(encoding="utf-8"), f"domainlm/prompts/{name}")
    _check(template)
    return template


def _stops(section: str, first_line: int, source: str) -> tuple[str, ...]:
    """The stop strings of a [stop] body whose first line is line `first_line` of the file `source`."""
    stops = []
    for number, line in enumerate(section.splitlines(), first_line):
        if not line.strip():
            continue
        try:
            stop = json.loads(line)
        except ValueError:
            stop = None
        if not isinstance(stop, str) or not stop:
            raise InputError(
                f'[stop] entry {line.strip()!r} is not a JSON string such as "\\n###"',
                source=f"{source}, line {number}",
            )
        stops.append(stop)
    return tuple(stops)


def _check(template: PromptTemplate) -> None:
    sections = template.sections()
    if "prompt" in sections:
        if not sections["prompt"] or {"system", "user"} & sections.keys():
            raise InputError(
                "a [prompt] template needs prompt text and no [system] or [user]", source=template.path
            )
        template.stop  # noqa: B018 (parsed here so a bad line fails at load, naming the file)
    elif not sections.get("user"):
        raise InputError("the template has no [user] text", source=template.path)
    elif "stop" in sections:
        raise InputError("[stop] belongs to [prompt] templates, not chat ones", source=template.path)
    for section, body in sections.items():
        if section == "stop":
            continue
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(body) if name is not None}
        except ValueError as e:
            raise InputError(
                f"bad braces ({e}); write literal braces as {{{{ and }}}}", source=template.path
            ) from None
        unknown = sorted(names - set(FIELDS))
        if unknown:
            raise InputError(f"unknown field(s) {unknown}; available: {list(FIELDS)}", source=template.path)
