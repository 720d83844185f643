"""The umbrella command: discovery, help, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from nanoforge.cli import UserError
from nanoforge.cli import main as main_mod
from nanoforge.cli.errors import one_line


def test_help_lists_the_top_level_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_mod.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "nanoforge" in out and "Usage" in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_mod.main(["no-such-group"]) == 2
    assert "no-such-group" in capsys.readouterr().err


def _fake_group(raise_exc: BaseException) -> click.Group:
    @click.group(name="fake")
    def group() -> None:
        """A group used only by this test."""

    @group.command()
    def boom() -> None:
        raise raise_exc

    return group


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (UserError("vocab size 10 is below 256"), 1, "error: vocab size 10 is below 256"),
        (ValueError("bad value 3\nexpected 1 or 2"), 1, "error: bad value 3 expected 1 or 2"),
        (FileNotFoundError("no such file: x.txt"), 1, "error: no such file: x.txt"),
    ],
)
def test_errors_become_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exc: BaseException,
    code: int,
    message: str,
) -> None:
    monkeypatch.delenv("NANOFORGE_DEBUG", raising=False)
    main_mod.cli.add_command(_fake_group(exc))
    try:
        assert main_mod.main(["fake", "boom"]) == code
    finally:
        main_mod.cli.commands.pop("fake")
    err = capsys.readouterr().err
    assert err.strip() == message
    assert "Traceback" not in err


def test_debug_mode_reraises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOFORGE_DEBUG", "1")
    main_mod.cli.add_command(_fake_group(ValueError("boom")))
    try:
        with pytest.raises(ValueError, match="boom"):
            main_mod.main(["fake", "boom"])
    finally:
        main_mod.cli.commands.pop("fake")


def test_one_line_keyerror_has_no_quotes() -> None:
    assert one_line(KeyError("missing key 'x'")) == "missing key 'x'"


def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nanoforge.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "nanoforge" in proc.stdout and "0.1.0" in proc.stdout
