"""Prompt templates with `{column}` fields and `<Tag>` markers.

`Input: The SMILES of the molecule is <SMILES> {smiles}. Output: QED is <QED>` renders a row into parts:
text, tag markers and data fields. The last marker is the function tag, the others are domain tags.
A field right after a domain tag is that tag's data span (tokenised one character per token when the
tag asks for it, as the paper does for proteins and SMILES). A domain marker may name a field, `<{src}>`:
each row then says which tag goes there (translation: `Input: <{src}> {source} Output: <{tgt}> <Translate>
{target}` renders `Input: <FR> ... Output: <EN> <Translate> ...`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from domainlm.errors import InputError

TAG_MARKER = re.compile(r"<([A-Za-z][A-Za-z0-9_\-]*)>")
TAG_FIELD = re.compile(r"<\{([A-Za-z_][A-Za-z0-9_]*)\}>")  # a domain tag named by a row's field
TAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


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
        self._pieces = _split_markers(text, fields=True)
        self.markers = [v for k, v in self._pieces if k == "tag"]
        self.tag_fields = list(dict.fromkeys(v for k, v in self._pieces if k == "tagfield"))
        if not self.markers:
            raise InputError(
                f"template has no <Tag> marker; the last marker names the function tag: {text!r}"
            )
        if [k for k, _ in self._pieces if k in {"tag", "tagfield"}][-1] == "tagfield":
            raise InputError(f"the template's last marker is its function tag and must be a name: {text!r}")
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
        self.fields = list(dict.fromkeys(self.tag_fields + fields))  # in order of first use

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def check_columns(self, columns, source: str | None = None) -> None:
        missing = [f for f in self.fields if f not in columns]
        if missing:
            raise InputError(
                f"template field(s) {missing} not among the data columns {sorted(columns)}", source=source
            )

    def render(self, row: dict, *, source: str | None = None, item=None, prompt: bool = False) -> list[Part]:
        """Split a row into parts; a field right after a domain marker becomes that domain's data span.
        `prompt=True`: only up to the function tag, what a generative tag continues (the row needs no
        target)."""
        parts: list[Part] = []
        named: set[str] = set()  # the domain tags this row's tag fields name
        last = max(i for i, (k, _) in enumerate(self._pieces) if k == "tag")
        for kind, value in self._pieces[: last + 1] if prompt else self._pieces:
            if kind == "tagfield":
                value = self.tag_of(row, value, source, item)
                named.add(value)
            if kind in {"tag", "tagfield"}:
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
                            domain=self._preceding_domain(parts, named),
                        )
                    )
        return _merge_text(parts)

    def tag_of(self, row: dict, field: str, source=None, item=None) -> str:
        """The domain tag a row names in the tag field `field` (`<{field}>`)."""
        name = str(self._field(row, field, "", source, item)).strip()
        if not TAG_NAME.match(name):
            raise InputError(
                f"field {field!r} names the tag {name!r}, which must start with a letter and hold only "
                "[A-Za-z0-9_-]",
                source=source,
                item=item,
            )
        return name

    def row_domain_tags(self, row: dict) -> list[str]:
        """The domain tags a row's input holds: the template's own and those its tag fields name."""
        return list(dict.fromkeys(self.domain_tags + [self.tag_of(row, f) for f in self.tag_fields]))

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

    def _preceding_domain(self, parts: list[Part], named=()) -> str | None:
        for p in reversed(parts):
            if p.kind == "text" and not p.value.strip():
                continue
            if p.kind == "tag" and (p.value in self.domain_tags or p.value in named):
                return p.value
            return None
        return None


def _split_markers(text: str, known=None, *, fields: bool = False) -> list[tuple[str, str]]:
    """("text", ...) and ("tag", name) pieces; with `known`, markers of other names stay text; with
    `fields`, `<{field}>` markers are ("tagfield", field) pieces."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    pattern = re.compile(f"{TAG_MARKER.pattern}|{TAG_FIELD.pattern}") if fields else TAG_MARKER
    for m in pattern.finditer(text):
        name, field = m.group(1), m.group(2) if fields else None
        if field is None and known is not None and name not in known:
            continue
        if m.start() > pos:
            pieces.append(("text", text[pos : m.start()]))
        pieces.append(("tagfield", field) if field is not None else ("tag", name))
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


def prompt_of(parts: list[Part]) -> list[Part]:
    """A rendered input up to its last tag: what a generative function tag continues."""
    last = max((i for i, p in enumerate(parts) if p.kind == "tag"), default=len(parts) - 1)
    return parts[: last + 1]
