"""What `domainlm translate` does: a file of sentences, one a line, translated with language tags and a
generative <Translate> tag (a finished translation run's, or libraries and a model given one by one)."""

from __future__ import annotations

from pathlib import Path

from domainlm import io
from domainlm.engine.model import TaggedModel
from domainlm.engine.template import Template
from domainlm.errors import DomainLMError, InputError
from domainlm.runs import finished_run_config
from domainlm.tasks.translation import TEMPLATE


def check_language_tags(tm: TaggedModel, *names: str) -> None:
    """Each of `names` must be a domain tag the model holds; the message lists the ones it does."""
    known = sorted(n for n, s in tm.specs.items() if s.kind == "domain")
    for name in names:
        if name not in tm.specs or tm.specs[name].kind != "domain":
            raise InputError(
                f"unknown language tag <{name}>; known language tags: {', '.join(known) or 'none'}"
            )


def translate_lines(
    tm: TaggedModel, lines: list[str], src: str, tgt: str, *, template: str = TEMPLATE, **decoding
) -> tuple[list[str], int]:
    """Each line translated from <src> to <tgt> (`decoding`: `TaggedModel.generate` options), and how many
    lines were empty: those are not translated and give an empty line, so output lines match input lines."""
    check_language_tags(tm, src, tgt)
    tmpl = Template(template)
    if not tm.specs.get(tmpl.function_tag) or not tm.specs[tmpl.function_tag].generative:
        raise InputError(f"<{tmpl.function_tag}> is not a generative function tag of these tag libraries")
    keep = [i for i, line in enumerate(lines) if line.strip()]
    rows = [{"src": src, "tgt": tgt, "source": lines[i].strip()} for i in keep]
    prompts = [tmpl.render(r, prompt=True, item=f"line {i + 1}") for r, i in zip(rows, keep)]
    texts = tm.generate(prompts, **decoding) if prompts else []
    out = [""] * len(lines)
    for i, text in zip(keep, texts):
        out[i] = text
    return out, len(lines) - len(keep)


def translate_file(
    input: Path,
    out: Path,
    *,
    src: str,
    tgt: str,
    run=None,
    tags=None,
    model=None,
    template=None,
    max_new_tokens: int = 128,
    num_beams: int = 1,
    batch_size: int = 16,
    device=None,
) -> dict:
    """Translate `input` line by line into `out`; returns {"n_translated", "n_empty"}."""
    if run is not None:
        config = finished_run_config(run)
        model = model or config.model
        template = template or (config.task.template_text() if config.task else None)
        tags = [str(Path(run) / "tags"), *(tags or [])]
    if not (model and tags):
        raise DomainLMError("translate needs --run, or --model and --tags")
    lines = Path(input).read_text(encoding="utf-8").splitlines() if Path(input).is_file() else None
    if lines is None:
        raise InputError("file not found", source=str(input))
    tm = TaggedModel.from_pretrained(model, device=device)
    tm.load_tags(*tags)
    texts, n_empty = translate_lines(
        tm,
        lines,
        src,
        tgt,
        template=template or TEMPLATE,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        batch_size=batch_size,
    )
    io.write_text(Path(out), "".join(t.replace("\n", " ") + "\n" for t in texts))
    return {"n_translated": len(lines) - n_empty, "n_empty": n_empty}
