"""Progress bars and small argument parsers shared by the CLI commands."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import FornetError

Update = Callable[..., None]


@contextlib.contextmanager
def bar(description: str, total: int | None = None) -> Iterator[Update]:
    """A rich progress bar; yields ``update(done, total=None, note="")``."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, note="")

        def update(done: int, total: int | None = None, note: str = "") -> None:
            progress.update(task, completed=done, total=total if total is not None else progress.tasks[0].total, note=note)

        yield update


def parse_hw(text: str, option: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FornetError(f"{option} must look like HEIGHTxWIDTH (e.g. 512x1024), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise FornetError(f"{option} must be positive, got {text!r}")
    return h, w
