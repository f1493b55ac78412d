"""The registry commands' own parser (shim/cli/options.py) against argparse itself: for each command, an argparse
parser built from the same declarations must give the same values, the same errors (usage and message on stderr,
exit status 2) and the same help text, for hand-picked and for random command lines (hypothesis).
"""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasm_shim.shim.cli.options import APPEND, FLAG, Command, Option, UsageError
from wasm_shim.shim.cli.registry import COMMANDS

SETTINGS = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


def twin(command: Command) -> argparse.ArgumentParser:
    """argparse's parser for the same declarations."""
    parser = argparse.ArgumentParser(prog=command.prog, description=command.description or None)
    for item in command.arguments:
        if not isinstance(item, Option):
            parser.add_argument(item.dest, metavar=item.metavar, help=item.help or None)
            continue
        kwargs: dict[str, object] = {"dest": item.dest, "help": item.help or None}
        if item.kind == FLAG:
            kwargs["action"] = "store_true"
        else:
            kwargs.update(action="append" if item.kind == APPEND else "store", default=item.default,
                          required=item.required, metavar=item.metavar or None, choices=item.choices or None)
            if item.convert is not None:
                kwargs["type"] = _argparse_type(item.convert)
        parser.add_argument(*item.names, **kwargs)  # type: ignore[arg-type]
    return parser


def _argparse_type(convert):  # type: ignore[no-untyped-def]
    def converted(text: str) -> object:
        try:
            return convert(text)
        except UsageError as exc:
            if str(exc).startswith("invalid float value"):
                raise ValueError(text) from None  # argparse words a type=float failure itself
            raise argparse.ArgumentTypeError(str(exc)) from None

    converted.__name__ = "float" if "float" in convert.__name__ else convert.__name__
    return converted


def run_ours(command: Command, argv: list[str]) -> tuple[str, object, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return "parsed", dict(vars(command.parse(argv))), ""
        except UsageError as exc:
            status: object = command.fail(str(exc)).code
        except SystemExit as exc:
            status = exc.code
    return "exit", status, out.getvalue() + err.getvalue()


def run_theirs(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, object, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return "parsed", dict(vars(parser.parse_args(argv))), ""
        except SystemExit as exc:
            return "exit", exc.code, out.getvalue() + err.getvalue()


CASES = [
    [], ["r"], ["r", "-o", "f"], ["-o", "f", "r"], ["-of", "r"], ["--output=f", "r"], ["--out", "f", "r"],
    ["--o", "f", "r"], ["r", "-o"], ["r", "-o", "--format", "json"], ["--format", "yaml", "r", "-o", "f"],
    ["--format=json", "r", "-o", "f", "extra"], ["--bogus", "r", "-o", "f"], ["r", "-o", "f", "--plain-http=1"],
    ["r", "-o", "f", "--timeout", "x"], ["r", "-o", "f", "--timeout", "-1"], ["r", "-o", "f", "--timeout", "-.5"],
    ["r", "-o", "f", "--timeout=-inf"], ["r", "-o", "f", "--insecure-registry", "a", "--insecure-registry", "b"],
    ["-o", "-", "r"], ["-h"], ["--help"], ["--he"],
    ["r", "-o", "f", "-h"], ["--format", "yaml", "-h"], ["-hx"], ["--help=1"], ["--ca", "x", "r", "-o", "f"],
    ["--ca-bundle", "x", "r", "-o", "f"], ["--key", "k", "r"], ["--key", "a", "--key", "b", "r"],
    ["--new-bundle-format=false", "--key", "k", "r"], ["--new-bundle-format", "maybe", "--key", "k", "r"],
    ["-u", "me", "--password-stdin", "reg"], ["--password-stdin", "x", "reg"], ["f", "ref", "--annotation", "a=b"],
    ["--output-key-prefix", "x", "--force"], ["--predicate", "-", "--key", "k", "--type", "link", "r"],
    ["--condition", "a=b", "--key", "k", "r", "--type", "spdxjson"], ["--registry-config", "c", "reg"],
]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_hand_picked_command_lines_parse_and_fail_as_argparse_does(name: str, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    command = COMMANDS[name][0]()
    parser = twin(command)
    for argv in CASES:
        assert run_ours(command, argv) == run_theirs(parser, argv), argv


def test_a_double_dash_ends_the_options() -> None:
    # argparse 3.11 also reports a "--" no positional took among the unrecognized arguments (later versions do
    # not); here it only ends the options.
    pull = COMMANDS["pull"][0]()
    assert pull.parse(["-o", "f", "--", "-r"]).reference == "-r"
    with pytest.raises(UsageError, match="unrecognized arguments: -o f"):
        pull.parse(["-o", "f", "--", "r", "-o", "f"])
    assert run_ours(pull, ["-o", "f", "--", "-r"]) == run_theirs(twin(pull), ["-o", "f", "--", "-r"])


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("columns", ["60", "80", "140"])
def test_help_reads_as_argparse_writes_it(name: str, columns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    command = COMMANDS[name][0]()
    assert command.format_help() == twin(command).format_help()
    assert command.format_usage() == twin(command).format_usage()


def tokens(command: Command) -> st.SearchStrategy[str]:
    names = [name for option in command.options for name in option.names]
    values = ["json", "text", "bundle", "x", "-", "-1", "-x", "1.5", "true", "a=b", "", "-o", "--f"]
    return st.sampled_from(names) | st.sampled_from(values) | st.sampled_from(names).map(lambda n: n + "=v") | \
        st.sampled_from([n[:k] for n in names if n.startswith("--") for k in range(3, len(n))])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_random_command_lines_parse_and_fail_as_argparse_does(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    command = COMMANDS[name][0]()
    parser = twin(command)

    @SETTINGS
    @given(st.lists(tokens(command), max_size=7))
    def agree(argv: list[str]) -> None:
        assert run_ours(command, argv) == run_theirs(parser, argv), argv

    agree()
