"""The `vispre` dispatcher: bad input is one line with exit code 2, anything else keeps its traceback;
`--traceback` and VISPRE_DEBUG=1 show the traceback of bad input too; unknown commands are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vispre.commands import main
from vispre.commands.main import COMMANDS, strip_traceback_flag


def test_unknown_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    assert "commands: fit, eval, export, shards, grow, bench" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "b.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"vispre export: error: checkpoint {tmp_path / 'nope.ckpt'} does not exist"


@pytest.mark.parametrize("where", ["first", "last"])
def test_traceback_flag_is_stripped_and_reraises(where: str, tmp_path: Path) -> None:
    args = ["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "b.safetensors")]
    args = ["--traceback", *args] if where == "first" else [*args, "--traceback"]
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        main(args)


def test_vispre_debug_reraises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISPRE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["export", str(tmp_path / "nope.ckpt"), str(tmp_path / "b.safetensors")])


def test_internal_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (here a KeyError, which the old boundary printed as `error: 'views'`) is not caught."""
    monkeypatch.setitem(COMMANDS, "buggy", "tests.commands.buggy_command")
    with pytest.raises(KeyError, match="views"):
        main(["buggy"])


def test_strip_traceback_flag_keeps_arguments_after_a_double_dash() -> None:
    assert strip_traceback_flag(["fit", "--traceback", "--x=1"]) == (["fit", "--x=1"], True)
    assert strip_traceback_flag(["fit", "--", "--traceback"]) == (["fit", "--", "--traceback"], False)
