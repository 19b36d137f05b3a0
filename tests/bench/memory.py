"""Peak memory of a server and every process under it, sampled from /proc.

vLLM runs its engine in a child process (and `transformers serve` may start workers), so a server's memory
is the sum of its process tree's RSS. Children are found by parent pid over all of /proc, which also sees
those started from a thread other than the main one (a `task/PID/children` file lists only its own
thread's). Shared pages (libraries, torch) count once per process, as RSS does.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (not itself), from each process's parent pid in /proc/N/stat."""
    parent: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parent.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = parent.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and its descendants, summed, in MB (0 for processes gone meanwhile)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1])  # resident pages
        except (OSError, IndexError, ValueError):
            continue
    return total * PAGE_MB


class RssSampler:
    """`with RssSampler(pid) as s: ...` then s.peak_mb: the peak of the tree's summed RSS, sampled every
    `interval` seconds in a thread of its own (and once at the start and at the end)."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def sample(self) -> float:
        mb = tree_rss_mb(self.pid)
        self.peak_mb = max(self.peak_mb, mb)
        return mb

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
