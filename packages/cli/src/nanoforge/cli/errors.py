"""Error reporting for command-line tools: one line a user can act on, never a traceback dump.

``UserError`` is for problems the user can fix (a missing file, a bad value). The umbrella command also
turns the library exceptions that mean "bad input" (``ValueError``, ``OSError``, ``KeyError``) into one
line, since libraries raise those with a message that names the problem. ``NANOFORGE_DEBUG=1`` re-raises
so a developer sees the traceback.
"""

from __future__ import annotations

import os
from typing import IO, Any

import click

#: Exit status for a bad input file or value (click uses 2 for usage errors).
EXIT_USER_ERROR = 1


class UserError(click.ClickException):
    """A problem with the user's input; printed as ``error: <message>`` with exit status 1."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def debug_enabled() -> bool:
    """True when ``NANOFORGE_DEBUG`` asks for full tracebacks."""
    return os.environ.get("NANOFORGE_DEBUG", "") not in ("", "0", "false", "no")


def one_line(exc: BaseException) -> str:
    """Render an exception as a single line: ``KeyError('x')`` -> ``'x'``; multi-line messages joined."""
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    msg = " ".join(part.strip() for part in msg.splitlines() if part.strip())
    return msg or type(exc).__name__
