"""The `domainlm` command: a thin typer app over the library. Each command group lives in its own module."""

from __future__ import annotations

import functools
import importlib
import logging

import typer
from rich.console import Console

from domainlm.errors import DomainLMError

app = typer.Typer(
    name="domainlm",
    help="Turn general-purpose language models into scientific and biomedical specialists.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

# Modules that register commands on `app` when imported.
COMMAND_MODULES = ["tagllm", "qa", "bench", "students"]


@functools.cache  # once: commands must not be wrapped twice
def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"domainlm.cli.{name}")
    _wrap_commands(app)
    _flags_without_type()


def _flags_without_type() -> None:
    """Help shows no value type for flags (--resume, --isolate/--no-isolate, --help): they take no value,
    and typer's `<bool>` there reads as if they did."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "domainlm", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.domainlm = True
    TyperOption.display_type_rich = display_type_rich


def _wrap_commands(typer_app: typer.Typer) -> None:
    """Every command turns a DomainLMError into one clear line on stderr and exit status 2."""
    for info in typer_app.registered_commands:
        info.callback = _friendly(info.callback)
    for group in typer_app.registered_groups:
        _wrap_commands(group.typer_instance)


def _friendly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DomainLMError as e:
            console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def main() -> None:
    _register()
    _show_library_messages()
    app()  # every command turns a DomainLMError into a message and exit status 2 (`_friendly`)


def _show_library_messages() -> None:
    """The library's own log lines (where a model came from, rows skipped, texts cut) on stderr."""
    from rich.logging import RichHandler

    from domainlm import distributed

    logger = logging.getLogger("domainlm")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_time=False, show_path=False))
        # Of several processes training together the main one speaks for all; the others only warn.
        logger.setLevel(logging.INFO if distributed.is_main_process() else logging.WARNING)
