"""Progress of long loops, and the small iteration helpers the stages share (batches, reading
ahead). No pandas, no torch: the sources can use them without making the settings heavy."""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger("deepfake")

# (what, done, total) -> None: told of every step of every long loop (the Prefect tasks turn
# these into progress artifacts; the library itself only logs).
ProgressListener = Callable[[str, int, int], None]
_LISTENERS: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> None:
    """Have ``listener`` told of every ``Progress`` step in this process (once per listener)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


class Progress:
    """Logs count, rate and time left for long loops, at most every ``every`` seconds, and tells
    the progress listeners of every step."""

    def __init__(
        self, what: str, total: int, unit: str = "images", every: float = 5.0, log: bool = True
    ) -> None:
        self.what, self.total, self.unit, self.every, self.log = what, total, unit, every, log
        self.done = 0
        self.start = self._last = time.monotonic()
        self._tell()

    def _tell(self) -> None:
        for listener in _LISTENERS:
            listener(self.what, self.done, self.total)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._tell()
        now = time.monotonic()
        if self.log and (now - self._last >= self.every or self.done >= self.total):
            self._last = now
            log.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.what}: {self.done}/{self.total} {self.unit} ({share:.0f}%), "
            f"{rate:.1f} {self.unit}/s, ~{left:.0f} s left"
        )


def chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = 2) -> Iterator[R]:
    """``load(item)`` for each item in order, the next ``depth`` loaded in a background thread
    while the caller works on the current one (reading and decoding overlap the compute)."""
    source = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = itertools.islice(source, depth)
        pending = collections.deque(pool.submit(load, item) for item in first)
        while pending:
            result = pending.popleft().result()
            for item in source:
                pending.append(pool.submit(load, item))
                break
            yield result
