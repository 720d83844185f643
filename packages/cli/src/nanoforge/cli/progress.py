"""A rich progress bar on stderr that stays quiet when stderr is not a terminal (CI logs, pipes)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress(*, transient: bool = False, disable: bool | None = None) -> Progress:
    """Return a configured ``rich.progress.Progress`` (use it as a context manager).

    Args:
        transient: remove the bar when done.
        disable: force the bar off/on; by default it is on only when stderr is a terminal.
    """
    if disable is None:
        disable = not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
        disable=disable,
    )
