"""What the command line prints: one JSON object per command with --json, short human text
otherwise, and progress on stderr only when it is a terminal."""

from __future__ import annotations

import json
import sys
import threading
import time
from types import TracebackType


class CliError(Exception):
    """A one-line message for the user; the command exits non-zero."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def result(self, document: dict, text: str | list[str]) -> None:
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

    def progress(self, label: str) -> Progress:
        return Progress(label, enabled=not self.as_json and sys.stderr.isatty())


class Capture(Output):
    """An Output that keeps each result (for commands run by other commands, e.g. the demo)."""

    def __init__(self, echo: bool) -> None:
        super().__init__(as_json=False)
        self.echo = echo
        self.documents: list[dict] = []

    def result(self, document: dict, text: str | list[str]) -> None:
        self.documents.append(document)
        if self.echo:
            super().result(document, text)

    def note(self, text: str) -> None:
        if self.echo:
            super().note(text)

    @property
    def last(self) -> dict:
        return self.documents[-1]


class Progress:
    """`label [#####---------------] 25% (3.1 s)` redrawn on one terminal line while long work
    runs (the label may carry a rate and an ETA)."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.fraction: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def update(self, fraction: float, label: str | None = None) -> None:
        self.fraction = max(0.0, min(1.0, fraction))
        if label:
            self.label = label

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._draw, daemon=True)
            self._thread.start()
        return self

    def _draw(self) -> None:
        spinner = "|/-\\"
        tick = 0
        while not self._stop.wait(0.2):
            done = ""
            if self.fraction is not None:
                filled = round(20 * self.fraction)
                done = f" [{'#' * filled}{'-' * (20 - filled)}] {self.fraction:.0%}"
            elapsed = time.monotonic() - self._started
            sys.stderr.write(f"\r{spinner[tick % 4]} {self.label}{done} ({elapsed:.1f} s)\x1b[K")
            sys.stderr.flush()
            tick += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
