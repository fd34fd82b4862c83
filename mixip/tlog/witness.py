"""C2SP tlog-witness (https://c2sp.org/tlog-witness): a witness that cosigns a log's checkpoints
only when they extend the last one it cosigned for that log, and the client call a log makes.

`Witness.add_checkpoint` is the protocol's `add-checkpoint`, without HTTP: the request body is

    old <size of the last checkpoint the client knows the witness cosigned>
    <consistency proof hashes, base64, one per line, at most 63>
    <an empty line>
    <the signed checkpoint note>

and the reply is a status with a body: 200 and cosignature/v1 signature lines; 400 for a body
that is not in that form (or an old size beyond the checkpoint's); 403 when no trusted key of
the log signed it; 404 for a log the witness does not know; 409 and the size it holds
(`text/x.tlog.size`) when the old size is not that size; 422 when the proof does not show the
checkpoint extends the one it holds (a fork, a rewrite, a rollback). The check and the update
are one step under a lock, and the state is on disk before a cosignature leaves.

Hand-written: the protocol is a few lines over this package's notes and proofs, and the
witnesses that exist (litewitness, omniwitness) are Go programs, not libraries.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mixip.tlog.checkpoint import Checkpoint, open_checkpoint
from mixip.tlog.cosignature import Cosigner
from mixip.tlog.merkle import EMPTY_ROOT
from mixip.tlog.note import (
    InvalidSignatureError,
    NoteError,
    Signature,
    UnverifiedNoteError,
    Verifier,
    b64decode,
    b64encode,
)
from mixip.tlog.proof import ProofError, verify_consistency

MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_OLD = re.compile(r"old (0|[1-9][0-9]*)")


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Seen:
    """The last checkpoint the witness cosigned for one log."""

    size: int
    root: bytes


class WitnessState:
    """The last cosigned checkpoint per origin, in one JSON file replaced atomically (written,
    fsynced, renamed, directory fsynced) before a cosignature is returned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: dict[str, Seen] = {}
        if path.exists():
            for origin, entry in json.loads(path.read_text()).items():
                self._seen[origin] = Seen(entry["size"], b64decode(entry["root"], "state root"))

    def get(self, origin: str) -> Seen:
        return self._seen.get(origin, Seen(0, EMPTY_ROOT))

    def put(self, origin: str, seen: Seen) -> None:
        state = dict(self._seen, **{origin: seen})
        text = json.dumps(
            {o: {"size": s.size, "root": b64encode(s.root)} for o, s in sorted(state.items())}
        )
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._seen = state


class Witness:
    """Cosigns for the logs it knows (`logs`: origin → the log's note verifier) with `cosigner`.
    `step` is called between the check and the update (tests hold a request there)."""

    def __init__(
        self,
        cosigner: Cosigner,
        logs: Mapping[str, Verifier],
        state: WitnessState,
        step: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.cosigner = cosigner
        self.logs = dict(logs)
        self.state = state
        self._step = step
        self._lock = threading.Lock()

    def add_checkpoint(self, body: bytes) -> Reply:
        try:
            old, proof, note = _parse_request(body)
            origin = Checkpoint.parse(_note_text(note)).origin
        except (NoteError, UnicodeDecodeError) as exc:
            return Reply(400, f"bad request: {exc}\n")
        log = self.logs.get(origin)
        if log is None:
            return Reply(404, f"unknown log {origin}\n")
        try:
            checkpoint = open_checkpoint(note, log).checkpoint
        except (UnverifiedNoteError, InvalidSignatureError) as exc:
            return Reply(403, f"not signed by the log: {exc}\n")
        except NoteError as exc:
            return Reply(400, f"bad checkpoint: {exc}\n")
        if old > checkpoint.size:
            return Reply(400, f"old size {old} is beyond the checkpoint's {checkpoint.size}\n")
        with self._lock:
            seen = self.state.get(origin)
            if old != seen.size:
                return Reply(409, f"{seen.size}\n", SIZE_CONTENT_TYPE)
            try:
                if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
                    raise ProofError("a checkpoint of size 0 must have the empty tree's root")
                verify_consistency(seen.size, checkpoint.size, seen.root, checkpoint.root, proof)
            except ProofError as exc:
                return Reply(422, f"not consistent with the checkpoint of size {old}: {exc}\n")
            self._step("checked")
            self.state.put(origin, Seen(checkpoint.size, checkpoint.root))
        text = checkpoint.text.encode()
        cosignature = Signature(self.cosigner.name, self.cosigner.key_id, self.cosigner.sign(text))
        return Reply(200, cosignature.line)


def _parse_request(body: bytes) -> tuple[int, list[bytes], str]:
    text = body.decode("utf-8")
    head, blank, note = text.partition("\n\n")
    if not blank:
        raise NoteError("no empty line before the checkpoint")
    lines = head.split("\n")
    match = _OLD.fullmatch(lines[0])
    if match is None:
        raise NoteError("the first line is not 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise NoteError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    return int(match.group(1)), [b64decode(line, "a proof hash") for line in lines[1:]], note


def _note_text(note: str) -> str:
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("the checkpoint note has no signatures")
    return note[: split + 1]


# -- the log's side -------------------------------------------------------------------------


class WitnessRefused(Exception):
    """A witness answered add-checkpoint with something other than 200."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the witness answered {status}: {body.strip()}")
        self.status, self.body = status, body

    @property
    def known_size(self) -> int | None:
        """On 409, the size of the last checkpoint the witness cosigned."""
        return int(self.body) if self.status == 409 and self.body.strip().isdigit() else None


def request_body(old_size: int, proof: Iterable[bytes], note: str) -> bytes:
    lines = [f"old {old_size}", *(b64encode(h) for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


def add_checkpoint(
    url: str, old_size: int, proof: Iterable[bytes], note: str, timeout: float = 10.0
) -> str:
    """POSTs the checkpoint to the witness at `url` (its submission prefix) and returns the
    cosignature lines it answered (verify them before use); WitnessRefused otherwise."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"a witness URL is http(s), not {url!r}")
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
        url.rstrip("/") + "/add-checkpoint", data=request_body(old_size, proof, note)
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return str(response.read().decode())
    except urllib.error.HTTPError as error:
        raise WitnessRefused(error.code, error.read().decode(errors="replace")) from None
