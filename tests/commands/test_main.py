"""The `vispre` dispatcher: bad input is one line with exit code 2, anything else keeps its traceback;
`--traceback` and VISPRE_DEBUG=1 show the traceback of bad input too; unknown commands are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vispre.backbones.weights import EXPECTED_FILES
from vispre.commands import main
from vispre.commands.main import COMMANDS, strip_traceback_flag
from vispre.errors import VispreError


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


def test_validate_is_unknown_and_the_real_commands_are_listed(capsys: pytest.CaptureFixture) -> None:
    """`vispre validate` was removed (no objective has a validation step): the line lists what exists."""
    assert main(["validate"]) == 2
    assert capsys.readouterr().err.strip() == ("vispre: unknown command 'validate'; expected one of fit, eval, "
                                               "export, shards, grow, bench")


def user_error_argv(command: str, tmp_path: Path) -> list[str]:
    """A command line of ``command`` that fails on bad input (a file that does not exist)."""
    missing = str(tmp_path / "nope")
    return {"fit": ["fit", "--config", missing + ".yaml"], "eval": ["eval", missing, "--config", missing + ".yaml"],
            "export": ["export", missing + ".ckpt", str(tmp_path / "o.safetensors")],
            "shards": ["shards", "folder", missing, str(tmp_path / "out")],
            "grow": ["grow", missing + ".ckpt", str(tmp_path / "g.ckpt"), "--depth=4"],
            "bench": ["bench", "--config", missing + ".yaml"]}[command]


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("where", ["before", "after"])
def test_traceback_is_accepted_by_every_command(command: str, where: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """`--traceback` before or after the subcommand name re-raises bad input; without it: one line, exit 2."""
    argv = user_error_argv(command, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vispre {command}: error: ") and "nope" in err and len(err.splitlines()) == 1
    flagged = ["--traceback", *argv] if where == "before" else [argv[0], "--traceback", *argv[1:]]
    with pytest.raises((FileNotFoundError, VispreError), match="nope"):
        main(flagged)


def test_a_text_file_is_named_with_what_was_expected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before: `error: 101` (a KeyError from torch's unpickler), then a 34-line traceback."""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert main(["export", str(notes), str(tmp_path / "o.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == (f"vispre export: error: {notes} is not a checkpoint (a file starting "
                                               f"with b'hell', not a torch.save file): expected {EXPECTED_FILES}")
