"""A small, exact command-line parser for the registry commands, with argparse's grammar, messages and help layout.

Owns `Command` (one subcommand: its options and positionals, declared as data), `Arguments` (what a parse gives:
one attribute per destination) and `UsageError`. The registry commands run in scripts the way oras and cosign do,
so their start is paid per call; `argparse` costs milliseconds of imports (and `shutil`, `gettext` at parse time)
for a grammar this one covers: the node side's commands keep argparse (shim/cli/main.py).

Grammar (argparse's `_parse_optional` and its messages, for the kinds of option used here; tests/unit/
test_cli_options.py holds every command to an argparse parser built from the same declarations):
- `--name VALUE` and `--name=VALUE`; `-n VALUE`, `-nVALUE` and `-n=VALUE`; a flag takes no value (`--flag=x`: an
  error); a long name may be abbreviated to a prefix that names exactly one option (an ambiguous one is the first
  error); a token that reads as a negative number, or has a space in it, is a value.
- `--` ends the options (every token after it is positional; argparse 3.11 would also list an unused `--` among
  unrecognized arguments); `-` alone is a positional (stdin, for the commands that take it).
- `-h`/`--help` prints the help and exits 0 where it stands (an error in an earlier option comes first).
Errors print the usage line and `PROG: error: MESSAGE` on stderr and exit 2, worded as argparse words them:
"the following arguments are required", "invalid choice: 'x' (choose from 'a', 'b')", "expected one argument",
"unrecognized arguments", "ambiguous option", "ignored explicit argument"; the help is argparse's layout.
Only the help imports anything (textwrap, shutil for the terminal's width).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

FLAG, VALUE, APPEND = "flag", "value", "append"
HELP = ("-h", "--help")


class UsageError(Exception):
    """A command line the command cannot take; the message says which argument and why."""


class Arguments:
    """The parsed command line: one attribute per option and positional (`dest`), and `command`."""

    def __init__(self, values: dict[str, object]) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return f"Arguments({self.__dict__!r})"

    if TYPE_CHECKING:  # for the type checker only: at run time a misspelt name stays an AttributeError
        def __getattr__(self, name: str) -> Any: ...


class Option:
    __slots__ = ("names", "dest", "kind", "metavar", "help", "choices", "default", "required", "convert")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str, metavar: str, help: str,
                 choices: tuple[str, ...], default: object, required: bool,
                 convert: Callable[[str], object] | None) -> None:
        self.names, self.dest, self.kind, self.metavar, self.help = names, dest, kind, metavar, help
        self.choices, self.default, self.required, self.convert = choices, default, required, convert

    @property
    def label(self) -> str:
        """How messages name it: `-o/--output`."""
        return "/".join(self.names)

    def takes_value(self) -> bool:
        return self.kind != FLAG

    def shown_value(self) -> str:
        return "{" + ",".join(self.choices) + "}" if self.choices and not self.metavar else self.metavar

    def usage_part(self) -> str:
        text = self.names[0] if self.kind == FLAG else f"{self.names[0]} {self.shown_value()}"
        return text if self.required else f"[{text}]"

    def invocation(self) -> str:
        if self.kind == FLAG:
            return ", ".join(self.names)
        return ", ".join(f"{name} {self.shown_value()}" for name in self.names)


class Positional:
    __slots__ = ("metavar", "dest", "help")

    def __init__(self, metavar: str, dest: str, help: str) -> None:
        self.metavar, self.dest, self.help = metavar, dest, help


def _negative_number(text: str) -> bool:
    """argparse's `^-\\d+$|^-\\d*\\.\\d+$`: such a token is a value, not an option."""
    whole, dot, fraction = text[1:].partition(".")
    digits = "0123456789"
    return text.startswith("-") and (
        (not dot and bool(whole) and all(c in digits for c in whole))
        or (bool(dot) and bool(fraction) and all(c in digits for c in whole + fraction)))


def float_value(text: str) -> float:
    """argparse's `type=float`, with its message."""
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"invalid float value: {text!r}") from None


def bool_value(text: str) -> bool:
    """A Go-style boolean flag value (cosign's `--new-bundle-format=false`)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise UsageError(f"expected true or false, got {text!r}")


class Command:
    """One subcommand (`prog` is `wasm-shim NAME`); declare its options and positionals, then `parse`."""

    def __init__(self, prog: str, help: str = "", description: str = "") -> None:
        self.prog, self.help, self.description = prog, help, description
        self.options: list[Option] = []
        self.positionals: list[Positional] = []
        self.arguments: list[Option | Positional] = []  # as declared: the order of "arguments are required"

    def option(self, *names: str, dest: str = "", kind: str = VALUE, metavar: str = "", help: str = "",
               choices: Sequence[str] = (), default: object = None, required: bool = False,
               convert: Callable[[str], object] | None = None) -> None:
        if not dest:
            longest = max(names, key=len)
            dest = longest.lstrip("-").replace("-", "_")
        if kind == FLAG and default is None:
            default = False
        if not metavar and not choices and kind != FLAG:
            metavar = dest.upper()
        self.options.append(Option(tuple(names), dest, kind, metavar, help, tuple(choices), default, required,
                                   convert))
        self.arguments.append(self.options[-1])

    def positional(self, metavar: str, dest: str, help: str = "") -> None:
        self.positionals.append(Positional(metavar, dest, help))
        self.arguments.append(self.positionals[-1])

    # -- parsing -----------------------------------------------------------------------------------------------
    def _strings(self) -> list[tuple[Option | None, str]]:
        """Every option string with its option (None: the help), in declaration order."""
        return [(None, "-h"), (None, "--help")] + [(option, name) for option in self.options for name in option.names]

    def _classify(self, token: str) -> tuple[Option | None, str | None] | None:
        """None for a positional token; else (the option, None for the help; the value attached to it), read as
        argparse reads an option string (`_parse_optional`): exact; `NAME=VALUE`; a unique prefix of one name, or a
        one-letter name with its value attached (`-oFILE`); a negative number or a token with a space in it is a
        value. LookupError for an option string nothing declares; UsageError for an ambiguous one."""
        if not token.startswith("-") or token == "-":
            return None
        strings = self._strings()
        exact = {name: option for option, name in strings}
        if token in exact:
            return exact[token], None
        if "=" in token:
            name, _, explicit = token.partition("=")
            if name in exact:
                return exact[name], explicit
        matches: list[tuple[Option | None, str, str | None]] = []
        if token.startswith("--"):
            prefix, equals, explicit_text = token.partition("=")
            matches = [(option, name, explicit_text if equals else None) for option, name in strings
                       if name.startswith(prefix)]
        elif token[1] != "-":
            for option, name in strings:
                if name == token[:2]:
                    matches.append((option, name, token[2:]))
                elif name.startswith(token):
                    matches.append((option, name, None))
        if len(matches) > 1:
            raise UsageError(f"ambiguous option: {token} could match {', '.join(name for _, name, _ in matches)}")
        if matches:
            return matches[0][0], matches[0][2]
        if _negative_number(token) or " " in token:
            return None
        raise LookupError(token)

    def parse(self, argv: Sequence[str]) -> Arguments:
        """The arguments; UsageError for a command line this command cannot take (after -h: SystemExit 0)."""
        argv = list(argv)
        options_end = argv.index("--") if "--" in argv else len(argv)
        tokens, after = argv[:options_end], argv[options_end + 1:]
        # argparse reads every option string before it takes any value: an ambiguous one is the first error.
        kinds: list[tuple[Option | None, str | None] | None | str] = []
        for token in tokens:
            try:
                kinds.append(self._classify(token))
            except LookupError:
                kinds.append("unrecognized")
        values: dict[str, object] = {option.dest: option.default for option in self.options}
        seen: set[str] = set()
        positionals: list[tuple[int, str]] = []
        unrecognized: list[tuple[int, str]] = []
        index = 0
        while index < len(tokens):
            token, kind = tokens[index], kinds[index]
            index += 1
            if kind is None:
                positionals.append((index, token))
                continue
            if kind == "unrecognized":
                unrecognized.append((index, token))
                continue
            assert isinstance(kind, tuple)
            option, explicit = kind
            if option is None:  # -h, --help, or an abbreviation of it: argparse prints the help there and then
                if explicit is not None:
                    raise UsageError(f"argument -h/--help: ignored explicit argument {explicit!r}")
                sys.stdout.write(self.format_help())
                raise SystemExit(0)
            seen.add(option.dest)
            if option.kind == FLAG:
                if explicit is not None:
                    raise UsageError(f"argument {option.label}: ignored explicit argument {explicit!r}")
                values[option.dest] = True
                continue
            if explicit is None:
                if index >= len(tokens) or kinds[index] is not None:
                    raise UsageError(f"argument {option.label}: expected one argument")
                explicit = tokens[index]
                index += 1
            values[option.dest] = self._value(option, explicit, values[option.dest])
        positionals += [(len(tokens) + 1 + i, token) for i, token in enumerate(after)]
        given = dict(zip((p.dest for p in self.positionals), (token for _, token in positionals), strict=False))
        missing = [item.label if isinstance(item, Option) else item.metavar for item in self.arguments
                   if (item.required and item.dest not in seen if isinstance(item, Option)
                       else item.dest not in given)]
        if missing:
            raise UsageError(f"the following arguments are required: {', '.join(missing)}")
        extra = sorted(unrecognized + positionals[len(self.positionals):])
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(token for _, token in extra)}")
        values.update(given)
        return Arguments(values)

    def _value(self, option: Option, text: str, current: object) -> object:
        try:
            value = option.convert(text) if option.convert is not None else text
        except UsageError as exc:
            raise UsageError(f"argument {option.label}: {exc}") from None
        if option.choices and value not in option.choices:
            choices = ", ".join(repr(choice) for choice in option.choices)
            raise UsageError(f"argument {option.label}: invalid choice: {value!r} (choose from {choices})")
        if option.kind == APPEND:
            return [*(current if isinstance(current, list) else []), value]
        return value

    def fail(self, message: str) -> SystemExit:
        """Print the usage and the error as argparse does; the SystemExit(2) to raise."""
        sys.stderr.write(self.format_usage() + f"{self.prog}: error: {message}\n")
        return SystemExit(2)

    # -- help --------------------------------------------------------------------------------------------------
    def _width(self) -> int:
        import shutil

        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = shutil.get_terminal_size().columns
        return max(columns - 2, 40)

    def format_usage(self) -> str:
        """argparse's usage: the options, then the positionals; wrapped, the positionals start a line of their
        own, every line indented under the first."""
        prefix = f"usage: {self.prog} "
        options = ["[-h]", *(option.usage_part() for option in self.options)]
        positionals = [p.metavar for p in self.positionals]
        room = self._width() - len(prefix)
        if len(" ".join(options + positionals)) <= room:
            return prefix + " ".join(options + positionals) + "\n"
        lines = _fill(options, room) + _fill(positionals, room)
        return prefix + ("\n" + " " * len(prefix)).join(lines) + "\n"

    def format_help(self) -> str:
        import textwrap

        width = self._width()
        text = [self.format_usage()]
        if self.description:
            text.append("\n" + textwrap.fill(self.description, width) + "\n")
        if self.positionals:
            text.append("\npositional arguments:\n")
            text.extend(_rows([(p.metavar, p.help) for p in self.positionals], width))
        text.append("\noptions:\n")
        rows = [("-h, --help", "show this help message and exit")]
        rows += [(option.invocation(), option.help) for option in self.options]
        text.extend(_rows(rows, width))
        return "".join(text)


def _fill(parts: list[str], room: int) -> list[str]:
    """`parts` joined by spaces into lines of at most `room` characters, never splitting a part."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 1 + len(part) <= room:
            lines[-1] += " " + part
        else:
            lines.append(part)
    return lines


def _rows(rows: list[tuple[str, str]], width: int) -> list[str]:
    """argparse's two-column layout: the invocation at 2, the help at 24 (or on the next line when longer)."""
    import textwrap

    column = 24
    out = []
    for invocation, help in rows:
        head = "  " + invocation
        if not help:
            out.append(head + "\n")
            continue
        lines = textwrap.wrap(help, max(width - column, 20))
        if len(head) <= column - 2:
            out.append(head.ljust(column) + lines[0] + "\n")
            lines = lines[1:]
        else:
            out.append(head + "\n")
        out.extend(" " * column + line + "\n" for line in lines)
    return out
