"""What the command line prints: one JSON object per command with --json, short human text
otherwise, and progress on stderr only when it is a terminal."""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import Any

from mixip.runtime.usererror import UserError

# The command line's name for it: `mixip: MESSAGE` on stderr, the process exits `exit_code`.
CliError = UserError


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def result(self, document: dict[str, Any], text: str | list[str]) -> None:
        """The command's result: `document` as JSON, or `text` for people."""
        if self.as_json:
            print(json.dumps(document, ensure_ascii=False, default=str), flush=True)
            return
        for line in [text] if isinstance(text, str) else text:
            print(line, flush=True)

    def note(self, text: str) -> None:
        """Side information for people (stderr), silent with --json."""
        if not self.as_json:
            print(text, file=sys.stderr, flush=True)

    def progress(
        self,
        label: str,
        total: float | None = None,
        *,
        unit: str = "it",
        unit_scale: bool = False,
    ) -> Progress:
        """A progress bar, drawn only on a terminal without --json."""
        enabled = not self.as_json and sys.stderr.isatty()
        return Progress(label, enabled=enabled, total=total, unit=unit, unit_scale=unit_scale)


class Capture(Output):
    """An Output that keeps each result (for commands run by other commands, e.g. the demo)."""

    def __init__(self, echo: bool) -> None:
        super().__init__(as_json=False)
        self.echo = echo
        self.documents: list[dict[str, Any]] = []

    def result(self, document: dict[str, Any], text: str | list[str]) -> None:
        self.documents.append(document)
        if self.echo:
            super().result(document, text)

    def note(self, text: str) -> None:
        if self.echo:
            super().note(text)

    @property
    def last(self) -> dict[str, Any]:
        return self.documents[-1]


# What the bar shows while the total is unknown (a queued job, an export): the label and time.
UNKNOWN_TOTAL = "{desc} [{elapsed}]"


class Progress:
    """A tqdm bar on stderr (its rate and ETA are tqdm's) while long work runs, drawn only when
    stderr is a terminal and the command does not print JSON; otherwise nothing is written.

    `total` is in `unit`s (bytes, frames, files), None while unknown (the label and the time
    alone); `set` moves to an absolute position, `advance` by a step."""

    def __init__(
        self,
        label: str,
        *,
        enabled: bool,
        total: float | None = None,
        unit: str = "it",
        unit_scale: bool = False,
    ) -> None:
        from tqdm import tqdm  # here: every command imports this module, few draw a bar

        self.enabled = enabled
        self.bar = tqdm(
            total=total,
            desc=label,
            unit=unit,
            unit_scale=unit_scale,
            disable=not enabled,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
            bar_format=None if total else UNKNOWN_TOTAL,
        )

    def set(self, done: float, total: float | None = None, label: str | None = None) -> None:
        """Moves the bar to `done` of `total` (when given), with a new label."""
        if not self.enabled:  # a disabled tqdm keeps no label
            return
        if total is not None and total != self.bar.total:
            self.bar.total = total
            self.bar.bar_format = None  # tqdm's bar, with its rate and ETA
        if label is not None and label != self.bar.desc:
            self.bar.set_description_str(label)  # redrawn now: the state may change alone
        self.bar.update(done - self.bar.n)

    def restart(self, total: float | None = None) -> None:
        """From zero again (its rate and ETA too), e.g. at a job's new attempt."""
        self.bar.bar_format = None if total else UNKNOWN_TOTAL
        self.bar.reset(total)

    def advance(self, step: float = 1) -> None:
        self.bar.update(step)

    def write(self, text: str) -> None:
        """A line for people above the bar."""
        self.bar.write(text, file=sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.bar.close()
