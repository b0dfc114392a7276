"""Prompt templates with `{column}` fields and `<Tag>` markers.

`Input: The SMILES of the molecule is <SMILES> {smiles}. Output: QED is <QED>` renders a row into parts:
text, tag markers and data fields. The last marker is the function tag, the others are domain tags.
A field right after a domain tag is that tag's data span (tokenised one character per token when the
tag asks for it, as the paper does for proteins and SMILES).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from domainlm.errors import InputError

TAG_MARKER = re.compile(r"<([A-Za-z][A-Za-z0-9_\-]*)>")


@dataclass(frozen=True)
class Part:
    """One piece of a rendered input: `kind` is "text", "tag" or "data"."""

    kind: str
    value: str
    field: str | None = None  # for data parts: the column it came from
    domain: str | None = None  # for data parts: the domain tag it follows, if any


class Template:
    def __init__(self, text: str):
        if not text or not text.strip():
            raise InputError("the template is empty")
        self.text = text
        self._pieces = _split_markers(text)
        self.markers = [v for k, v in self._pieces if k == "tag"]
        if not self.markers:
            raise InputError(
                f"template has no <Tag> marker; the last marker names the function tag: {text!r}"
            )
        self.function_tag = self.markers[-1]
        self.domain_tags = list(dict.fromkeys(self.markers[:-1]))
        texts = [v for kind, v in self._pieces if kind == "text"]
        try:
            fields = [f for v in texts for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError as e:  # an unmatched brace
            raise InputError(
                f"{e} in the template {text!r}; write {{{{ and }}}} for literal braces"
            ) from None
        if "" in fields:
            raise InputError(f"the template has an empty {{}} field; name a column in it: {text!r}")
        self.fields = list(dict.fromkeys(fields))  # in order of first use

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def check_columns(self, columns, source: str | None = None) -> None:
        missing = [f for f in self.fields if f not in columns]
        if missing:
            raise InputError(
                f"template field(s) {missing} not among the data columns {sorted(columns)}", source=source
            )

    def render(self, row: dict, *, source: str | None = None, item=None) -> list[Part]:
        """Split a row into parts; a field right after a domain marker becomes that domain's data span."""
        parts: list[Part] = []
        for kind, value in self._pieces:
            if kind == "tag":
                parts.append(Part("tag", value))
                continue
            for literal, name, spec, _ in string.Formatter().parse(value):
                if literal:
                    parts.append(Part("text", literal))
                if name:
                    parts.append(
                        Part(
                            "data",
                            self._field(row, name, spec, source, item),
                            field=name,
                            domain=self._preceding_domain(parts),
                        )
                    )
        return _merge_text(parts)

    def _field(self, row: dict, name: str, spec: str, source, item) -> str:
        if name not in row:
            raise InputError(f"missing template field {name!r}", source=source, item=item)
        raw = row[name]
        if raw is None or (isinstance(raw, float) and raw != raw) or str(raw).strip() == "":
            raise InputError(f"empty value for template field {name!r}", source=source, item=item)
        if not spec:
            return str(raw)
        try:
            return format(raw, spec)
        except (TypeError, ValueError) as e:  # e.g. "{smiles:.2f}" over a string
            raise InputError(
                f"field {name!r}: cannot format {raw!r} as {spec!r} ({e})", source=source, item=item
            ) from None

    def _preceding_domain(self, parts: list[Part]) -> str | None:
        for p in reversed(parts):
            if p.kind == "text" and not p.value.strip():
                continue
            if p.kind == "tag" and p.value in self.domain_tags:
                return p.value
            return None
        return None


def _split_markers(text: str, known=None) -> list[tuple[str, str]]:
    """("text", ...) and ("tag", name) pieces; with `known`, markers of other names stay text."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    for m in TAG_MARKER.finditer(text):
        if known is not None and m.group(1) not in known:
            continue
        if m.start() > pos:
            pieces.append(("text", text[pos : m.start()]))
        pieces.append(("tag", m.group(1)))
        pos = m.end()
    if pos < len(text):
        pieces.append(("text", text[pos:]))
    return pieces


def _merge_text(parts: list[Part]) -> list[Part]:
    out: list[Part] = []
    for p in parts:
        if p.kind == "text" and out and out[-1].kind == "text":
            out[-1] = Part("text", out[-1].value + p.value)
        else:
            out.append(p)
    return out


def parse_marked_text(text: str, known_tags) -> list[Part]:
    """Parts of a raw string such as "The SMILES is <SMILES> CCO. QED is <QED>".

    Only registered tag names count as markers; any other `<...>` stays text. The first
    whitespace-delimited word after a domain marker (trailing `.,;:` aside) is that domain's data span."""
    parts: list[Part] = []
    for kind, value in _split_markers(text, known_tags):
        if kind == "tag":
            parts.append(Part("tag", value))
        else:
            parts.extend(_after_marker(parts, value))
    return parts


_DATA_WORD = re.compile(r"^(\s*)(\S*?)([.,;:]*)(\s.*|$)", re.S)


def _after_marker(parts: list[Part], value: str) -> list[Part]:
    if not parts or parts[-1].kind != "tag":
        return [Part("text", value)]
    lead, word, punct, rest = _DATA_WORD.match(value).groups()
    out = [Part("text", lead)] if lead else []
    if word:
        out.append(Part("data", word, domain=parts[-1].value))
    if punct + rest:
        out.append(Part("text", punct + rest))
    return out
