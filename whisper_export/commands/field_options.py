"""Command-line options made from the fields of the options dataclasses.

Each field of DecodingOptions, TranscribeOptions (runtime/options.py) and WriterOptions (runtime/writers.py,
where it exists) becomes one typer option: `--beam-size` for `beam_size`, its help text from the field's
metadata (`options.described`), its default the field's (or the metadata's `cli_default`, openai-whisper's CLI
default where that differs from its API's). So adding a field adds the option, with one default and one help
text. Values arrive as text and are converted here, so a bad value gets the same one-line error as every other
option ("--beam-size: received 'x', expected an int").
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Annotated, Any, Optional

import typer

PANELS = {"DecodingOptions": "Decoding", "TranscribeOptions": "Transcription", "WriterOptions": "Output files"}


@dataclass(frozen=True)
class FieldOption:
    """One dataclass field as a command-line option."""

    name: str  # the field's name, also the command's keyword
    owner: str  # the dataclass it belongs to
    kind: type  # bool, int, float or str: what the text is converted to
    optional: bool  # None is a value: "None" on the command line (openai-whisper's optional_int/optional_float)
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parameter(self) -> inspect.Parameter:
        """The keyword parameter typer reads the option from (booleans are --x/--no-x flags)."""
        panel = PANELS.get(self.owner, self.owner)
        if self.kind is bool:
            decls = (f"{self.flag}/--no-{self.flag[2:]}",)
            option = typer.Option(*decls, help=self.help, rich_help_panel=panel)
            return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default,
                                     annotation=Annotated[bool, option])
        metavar = {int: "INT", float: "FLOAT", str: "TEXT"}[self.kind] + ("|None" if self.optional else "")
        help = self.help + (" \\[default: None]" if self.default is None else "")  # typer shows no None default
        option = typer.Option(self.flag, help=help, metavar=metavar, show_default=True, rich_help_panel=panel)
        default = None if self.default is None else str(self.default)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=Annotated[Optional[str], option])

    def parse(self, value: Any) -> Any:
        """The field's value from the command line's text; ValueError naming the option otherwise."""
        if value is None or isinstance(value, bool):
            return value
        if self.optional and value.strip().lower() == "none":
            return None
        if self.kind is str:
            return value
        try:
            return self.kind(value)
        except ValueError:
            expected = {int: "an int", float: "a number"}[self.kind] + (" or None" if self.optional else "")
            raise ValueError(f"{self.flag}: received {value!r}, expected {expected}") from None


def _kind(hint: Any) -> tuple[type, bool]:
    """(what the command line's text becomes, whether None is allowed) for a field's type hint: the one scalar
    of a union (str wins over the iterables it stands for: suppress_tokens; float over tuples: temperature)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
    optional = type(None) in args
    for kind in (bool, str, float, int):
        if kind in args:
            return kind, optional
    raise TypeError(f"no command-line type for {hint!r}")


def field_options(cls: type) -> list[FieldOption]:
    """The options of a dataclass's fields, in order; fields marked cli=False are left out."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in fields(cls):
        if not f.metadata.get("cli", True):
            continue
        kind, optional = _kind(hints[f.name])
        default = f.metadata.get("cli_default", f.default if f.default is not MISSING else None)
        found.append(FieldOption(f.name, cls.__name__, kind, optional or default is None, default,
                                 f.metadata.get("help", f"see {cls.__name__}.{f.name}")))
    return found


def command_signature(explicit: inspect.Signature, options: list[FieldOption]) -> inspect.Signature:
    """explicit's parameters (those that are no dataclass field), then one keyword parameter per option."""
    taken = set(explicit.parameters)
    clash = sorted(taken & {o.name for o in options})
    if clash or len({o.name for o in options}) != len(options):
        raise TypeError(f"options dataclass fields {clash} repeat a command parameter or another field")
    return explicit.replace(parameters=[*explicit.parameters.values(), *(o.parameter() for o in options)])
