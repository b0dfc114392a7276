"""The `domainlm` command: a thin typer app over the library. Each command group lives in its own module."""

from __future__ import annotations

import importlib
import sys

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
COMMAND_MODULES = ["tags", "qa", "bench"]


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"domainlm.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"domainlm.cli.{name}":
                raise


def main() -> None:
    _register()
    try:
        app()
    except DomainLMError as e:
        console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)
