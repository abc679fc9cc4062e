"""Fuzzing the settings: random values for every config key (``--set``), random YAML config
files and random command lines for every ``grootvl`` command, parsed and validated (nothing
trains). Whatever comes in, the outcome is a valid config or a one-line UserError (argparse's
own usage error for a malformed command line), never another exception."""
from __future__ import annotations

import argparse
import contextlib
import io
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grootvl.cli.main import build_parser
from grootvl.engine.config import _leaf_keys
from grootvl.errors import UserError
from grootvl.tasks import RunConfig, load_config

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KEYS = _leaf_keys(RunConfig)

# scalars a user (or a damaged file) might write, in YAML
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.printable, max_size=12),
    st.sampled_from(["cosine", "adamw", "rand-m9", "rand-bogus", "cpu", "cuda:3", "auto", "bf16",
                     "grootv_tiny", "1e-3", "-1", "0", "nan", ".inf", "[1, 2]", "{a: 1}"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["a", "channels", "depths"]),
                                                 inner, max_size=3)), max_leaves=8)
# words for command-line values: numbers at and beyond every range, words, YAML, nothing
WORDS = st.one_of(
    st.sampled_from(["0", "1", "-1", "2", "3", "nan", "inf", "-inf", "1e30", "1000000000000",
                     "1.5", "abc", "", "true", "null", "[1, 2]", "{a: 1}", "auto", "cpu",
                     "cuda:99", "none", "bf16", "tiny", "grootv_tiny", "rand-m9-mstd0.5",
                     "/nonexistent/file.pth"]),
    st.integers(min_value=-10**15, max_value=10**15).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.=:[]{}, ", max_size=10))


def _yaml(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.strip().removesuffix("...").strip()


INTS = st.one_of(st.integers(min_value=-3, max_value=5),
                 st.integers(min_value=-2**64, max_value=2**64)).map(str)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.floats(min_value=-2.0, max_value=2.0)).map(repr)


def _words_for(action: argparse.Action):
    """Values for one option: numbers of its type more often than not (so that the schema,
    not argparse, has to judge them), any word otherwise."""
    typed = {int: INTS, float: FLOATS}.get(action.type)
    return st.one_of(typed, typed, WORDS) if typed is not None else WORDS


def _one_line_user_error(call) -> None:
    """``call()`` returns, or raises a UserError whose message is one line."""
    try:
        call()
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))


@FUZZ
@given(key=st.one_of(st.sampled_from(KEYS), st.text(alphabet=string.ascii_lowercase + "._",
                                                    max_size=16)),
       value=VALUES)
def test_random_set_values_give_a_config_or_one_line_error(key, value):
    _one_line_user_error(lambda: load_config(overrides=[f"{key}={_yaml(value)}"]))


SECTIONS = st.sampled_from(["model", "data", "aug", "optim", "sched", "ema", "train", "detection",
                            "segmentation", "task", "base", "bogus"])


@FUZZ
@given(document=st.one_of(
    st.dictionaries(SECTIONS, st.one_of(VALUES, st.dictionaries(
        st.sampled_from([k.split(".")[-1] for k in KEYS] + ["bogus"]), VALUES, max_size=4)),
        max_size=4),
    VALUES))
def test_random_yaml_documents_give_a_config_or_one_line_error(tmp_path, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    _one_line_user_error(lambda: load_config(str(path), flags={"data.path": ("d", "--data")}))


@FUZZ
@given(data=st.binary(max_size=64))
def test_random_bytes_as_a_config_file_give_one_line_error(tmp_path, data):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    _one_line_user_error(lambda: load_config(str(path)))


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = _commands()


def _options(command: str) -> list[argparse.Action]:
    return [a for a in COMMANDS[command]._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_random_command_lines_parse_and_validate_or_fail_in_one_line(command):
    options = _options(command)

    pick = st.sampled_from(options).flatmap(
        lambda action: st.tuples(st.just(action), st.lists(_words_for(action), min_size=2,
                                                           max_size=2)))

    @FUZZ
    @given(picks=st.lists(pick, max_size=5))
    def check(picks):
        argv = [command]
        for action in options:  # required options get a value, so that parsing goes on
            if action.required:
                argv += [action.option_strings[-1], "x"]
        for action, words in picks:
            flag = action.option_strings[-1]
            if action.nargs == 0:
                argv.append(flag)
            elif action.nargs == 2:
                argv += [flag, *words]
            elif action.nargs in ("*", "+"):
                argv += [flag, *words]
            else:
                argv.append(f"{flag}={words[0]}")  # '=' so that "-1" reaches the option
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                args = COMMANDS[command].parse_args(argv[1:])
        except SystemExit as exit_:  # argparse: usage, then one error line
            lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
            assert exit_.code == 2 and "error:" in lines[-1], stderr.getvalue()
            return
        validate = getattr(args, "validate", None)
        if validate is not None:
            _one_line_user_error(lambda: validate(args))

    check()
