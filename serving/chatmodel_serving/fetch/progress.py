"""Download progress: a bar on a terminal, else one JSON line every few seconds (a Job's log, which the
operator reads into the ChatModel's status)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from chatmodel_operator.download_contract import progress_line


class Progress:
    def __init__(
        self,
        source: str,
        revision: str,
        total_bytes: int,
        total_files: int,
        stream: TextIO | None = None,
        interval: float = 5.0,
    ) -> None:
        self.source, self.revision = source, revision
        self.total_bytes, self.total_files = total_bytes, total_files
        self.done_bytes = self.done_files = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._last = 0.0
        self._bar: Any = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=source, file=self.stream)

    def advance(self, n: int) -> None:
        self.done_bytes += n
        if self._bar is not None:
            self._bar.update(n)
        elif time.monotonic() - self._last >= self.interval:
            self.emit("downloading")

    def file_done(self) -> None:
        self.done_files += 1

    def emit(self, state: str) -> None:
        self._last = time.monotonic()
        if self._bar is not None:
            return
        record = {
            "state": state,
            "source": self.source,
            "revision": self.revision,
            "bytesDone": self.done_bytes,
            "bytesTotal": self.total_bytes,
            "filesDone": self.done_files,
            "filesTotal": self.total_files,
        }
        print(progress_line(record), file=self.stream, flush=True)

    def close(self, state: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.emit(state)
