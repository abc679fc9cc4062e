"""``grootvl`` entry point: user errors end in one ``error:`` line and status 2, bugs keep
their traceback, whichever sub-command raises them."""
from __future__ import annotations

import pytest

import grootvl.cli.lm as lm_commands
from grootvl.cli.main import main
from grootvl.errors import UserError

MERGE = ["lm-merge", "--base", "b", "--adapter", "a", "--output-dir", "o"]


def test_user_error_from_an_undecorated_subcommand_is_one_line_and_status_2(monkeypatch, capsys):
    def bad_input(args):
        raise UserError(f"--adapter {args.adapter}: no such folder")

    monkeypatch.setattr(lm_commands, "run_merge", bad_input)  # registered without cli_command
    assert main(MERGE) == 2
    err = capsys.readouterr().err
    assert err == "grootvl lm-merge: error: --adapter a: no such folder\n"


def test_bug_in_a_subcommand_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise RuntimeError("internal bug")

    monkeypatch.setattr(lm_commands, "run_merge", bug)
    with pytest.raises(RuntimeError, match="internal bug"):
        main(MERGE)


def test_user_error_from_a_decorated_subcommand(capsys):
    # --set parsing fails before any data or model is touched.
    assert main(["train", "--set", "no_equals_sign"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("grootvl train: error: --set 'no_equals_sign'"), err


def test_no_command_prints_help_and_status_2(capsys):
    assert main([]) == 2
    assert "usage: grootvl" in capsys.readouterr().out
