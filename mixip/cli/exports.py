"""The exports the command line receives (`mixip export`, `mixip accounts export`, `mixip
account export`): a JSON document that holds personal data, printed, or written to a file 0600
and never over an existing one unless --force."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixip.cli.output import CliError, Output
from mixip.runtime.files import write_private


def refuse_existing(output: str | None, *, force: bool) -> None:
    """Refuses an existing `output` without --force before the export is asked for (no export
    is made for nothing); `write_export` checks again, atomically, on creation."""
    if output and Path(output).exists() and not force:
        raise CliError(f"{output} exists; pass --force to overwrite it", exit_code=2)


def write_export(path: Path, text: str, *, force: bool) -> None:
    """Writes the export 0600, never over an existing file unless --force."""
    try:
        write_private(path, text, exclusive=not force)
    except FileExistsError:
        raise CliError(f"{path} exists; pass --force to overwrite it", exit_code=2) from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}", exit_code=2) from None


def show_export(
    out: Output,
    document: dict[str, Any],
    document_json: str,
    output: str | None,
    *,
    force: bool,
    subject: dict[str, str],
) -> None:
    """The export printed as it came (`document_json`), or written to `output` with a line that
    counts each of its lists; `subject` (whose export it is) leads the --json result."""
    if not output:
        out.result(document, document_json)
        return
    write_export(Path(output), document_json + "\n", force=force)
    counts = {k: len(v) for k, v in document.items() if isinstance(v, list)}
    out.result(
        {**subject, "written": output, "counts": counts},
        f"wrote {output}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
    )
