"""The README's commands and Python snippets, so they cannot drift: every `domainlm ...` line parses (the
command exists, every option is known and of the right type), and the Python snippets run with a tiny model
standing in for the packaged and 7B ones."""

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer._click.exceptions import UsageError  # typer parses with its own copy of click

from domainlm.cli import _register, app

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[str]:
    """Every `domainlm ...` line of the bash blocks (also as `accelerate launch ... -m domainlm ...`),
    continuation lines joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("accelerate launch ") and " -m domainlm " in line:  # the launched command
                line = "domainlm " + line.split(" -m domainlm ", 1)[1]
            if line.startswith("domainlm "):
                out.append(line)
    return out


def parse(args: list[str]) -> None:
    """What the command line would do up to running the command: resolve it and parse its options."""
    _register()
    command = typer.main.get_command(app)
    ctx = command.make_context("domainlm", list(args), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group: on to its subcommand
        name, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)


def test_the_readme_has_commands_and_snippets():
    assert len(commands()) >= 15 and len(blocks("python")) >= 2


@pytest.mark.parametrize("line", commands())
def test_every_readme_command_parses(line):
    args = shlex.split(line.replace("$DATA", "../shared/data"))[1:]
    try:
        parse(args)
    except UsageError as e:
        pytest.fail(f"README: {line!r}: {e.format_message()}")


def test_python_snippets_run_with_a_tiny_model(model_dir, tmp_path, monkeypatch):
    from domainlm import TaggedModel

    model = str(model_dir("bert"))
    monkeypatch.chdir(tmp_path)
    for name, tag in (("smiles", "SMILES"), ("protein", "Protein")):  # runs/X as `domainlm train` leaves them
        library = TaggedModel.from_pretrained(model)
        library.add_tag(tag, char_level=True)
        library.save_tags(tmp_path / "runs" / name / "tags")
    for snippet in blocks("python"):
        code = re.sub(r'from_pretrained\("[^"]+"\)', f"from_pretrained({model!r})", snippet)
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        if "out" in namespace:
            assert namespace["out"].predictions.shape == (1,) and namespace["out"].loss is not None


def test_an_unknown_option_fails_to_parse():
    with pytest.raises(UsageError):
        parse(["train", "--no-such-option", "1"])


def test_a_batch_mixing_marked_and_unmarked_inputs_is_an_error(model_dir):
    from domainlm import TaggedModel
    from domainlm.errors import InputError

    tm = TaggedModel.from_pretrained(str(model_dir("bert")))
    tm.add_tag("SMILES", char_level=True)
    tm.add_tag("QED", kind="function", head="regression")
    with pytest.raises(InputError, match="mixes inputs"):
        tm.encode(["The SMILES is <SMILES> CCO. QED is <QED>", "plain text"])
