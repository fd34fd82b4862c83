"""A stored video read by ranges: a seekable file object over a `fetch(offset, length)` that the
caller of a segment call answers (MatchVideoSegment, docs/jobs.md#segments).

FFmpeg (through PyAV) reads a container mostly forward with a few seeks (an MP4's index at the
end, then back); the reader fetches aligned blocks and keeps the last few, so the matcher holds
at most `max_blocks * block_bytes` of the video, however long it is.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable

BLOCK_BYTES = 1024 * 1024
MAX_BLOCKS = 4

Fetch = Callable[[int, int], bytes]


class RangeReader(io.RawIOBase):
    """Reads `size` bytes through `fetch`, a block of `block_bytes` at a time, keeping at most
    `max_blocks` of them (least recently used dropped first)."""

    def __init__(
        self,
        fetch: Fetch,
        size: int,
        *,
        block_bytes: int = BLOCK_BYTES,
        max_blocks: int = MAX_BLOCKS,
    ) -> None:
        super().__init__()
        if size < 0 or block_bytes <= 0 or max_blocks <= 0:
            raise ValueError(f"bad reader shape: {size}, {block_bytes}, {max_blocks}")
        self._fetch = fetch
        self.size = size
        self.block_bytes = block_bytes
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._position = 0
        # What tests check: the most held at once, the most asked in one fetch, the total.
        self.max_buffered = 0
        self.max_fetched = 0
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        written = 0
        while written < len(view) and self._position < self.size:
            index, skip = divmod(self._position, self.block_bytes)
            block = self._block(index)
            piece = block[skip : skip + len(view) - written]
            if not piece:
                break
            view[written : written + len(piece)] = piece
            written += len(piece)
            self._position += len(piece)
        return written

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is not None:
            self._blocks.move_to_end(index)
            return block
        offset = index * self.block_bytes
        length = min(self.block_bytes, self.size - offset)
        block = self._fetch(offset, length)
        if len(block) != length:
            raise OSError(f"asked {length} bytes at {offset}, got {len(block)}")
        self.fetched += length
        self.max_fetched = max(self.max_fetched, length)
        self._blocks[index] = block
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
        self.max_buffered = max(self.max_buffered, sum(len(b) for b in self._blocks.values()))
        return block
