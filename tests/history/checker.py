"""The rule, checked over a recorded history.

**No read that started after a write's invalidation returned may return a version
older than that write.** A read overlapping the invalidation may return either
version (it raced the write); a read that started after it must see the write.

One exception, documented in the README ("Degrading, not failing"): when an
invalidation cannot reach Redis it is held in-process and re-applied in the
background, and until then *other processes* may read the old value. So a write
recorded as ``held`` (its process still had invalidations pending right after it)
binds readers of its own process from the end of its invalidation, as any write,
but readers of other processes only from the moment its process was next seen with
nothing pending (``Pending`` samples); never, if that moment did not come. The run
separately fails if held invalidations never settle (a liveness failure), so this
exemption cannot hide an invalidation that is lost for good.

The check is O(n log n): per key (and per reading process, for the exemption), the
writes are sorted by the instant they bind readers, with a running maximum of their
versions; each read binary-searches the last write that bound it.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tests.history.recorder import Pending, Read, Write

__all__ = ["Report", "Violation", "binding_instant", "check"]

INFINITY = float("inf")


class Violation(NamedTuple):
    """``read`` started after ``write``'s invalidation returned, yet returned an
    older version. ``write`` is the newest write that bound the read."""

    read: Read
    write: Write

    def __str__(self) -> str:
        r, w = self.read, self.write
        return (
            f"{r.via}({r.key!r}) by {r.actor} (pid {r.proc}), {r.start:.6f}..{r.end:.6f}, "
            f"returned version {r.version}; but version {w.version} was committed at "
            f"{w.committed:.6f} and invalidated ({w.via}) by {w.actor} (pid {w.proc}) in "
            f"{w.start:.6f}..{w.end:.6f}{' (held)' if w.held else ''}, "
            f"{r.start - w.end:.6f} s before the read started"
        )


@dataclass
class Report:
    """What one check found."""

    operations: int = 0
    reads: int = 0
    writes: int = 0
    violations: list[Violation] = field(default_factory=list)
    held: int = 0  # writes whose invalidation was held (the backend was unreachable)
    exempted: int = 0  # reads excused only by another process's held invalidation

    def add(self, other: Report) -> None:
        self.operations += other.operations
        self.reads += other.reads
        self.writes += other.writes
        self.violations += other.violations
        self.held += other.held
        self.exempted += other.exempted


def _settle_times(pending: Iterable[Pending]) -> dict[int, list[float]]:
    """Per process, the sorted instants at which it had nothing pending."""
    times: dict[int, list[float]] = defaultdict(list)
    for sample in pending:
        if sample.held == 0:
            times[sample.proc].append(sample.at)
    for series in times.values():
        series.sort()
    return times


def binding_instant(write: Write, reader: int, settled: dict[int, list[float]]) -> float:
    """From when ``write`` binds reads of process ``reader``: the end of its
    invalidation, or, if it was held and the reader is another process, the first
    instant after that its process had nothing pending (never, if none)."""
    if not write.held or write.proc == reader:
        return write.end
    series = settled.get(write.proc, [])
    index = bisect.bisect_right(series, write.end)
    return series[index] if index < len(series) else INFINITY


class _Bound(NamedTuple):
    """The writes of one key as seen by one reading process."""

    instants: list[float]  # sorted binding instants
    newest: list[Write]  # newest[i]: the highest version among writes 0..i


def _bound(writes: Sequence[Write], reader: int, settled: dict[int, list[float]]) -> _Bound:
    ordered = sorted((binding_instant(w, reader, settled), w) for w in writes)
    instants: list[float] = []
    newest: list[Write] = []
    for instant, write in ordered:
        if instant == INFINITY:
            break
        best = write if not newest or write.version > newest[-1].version else newest[-1]
        instants.append(instant)
        newest.append(best)
    return _Bound(instants, newest)


def _violated_by(read: Read, bound: _Bound) -> Write | None:
    # Writes that bound the read: those whose instant is strictly before its start.
    index = bisect.bisect_left(bound.instants, read.start)
    if index == 0:
        return None
    write = bound.newest[index - 1]
    return write if read.version < write.version else None


def check(
    reads: Sequence[Read],
    writes: Sequence[Write],
    pending: Iterable[Pending] = (),
    *,
    others: int = 0,
) -> Report:
    """Check ``reads`` against ``writes``; ``pending`` samples date the settling of
    held invalidations; ``others`` only adds to the count of operations."""
    settled = _settle_times(pending)
    by_key: dict[str, list[Write]] = defaultdict(list)
    for write in writes:
        by_key[write.key].append(write)
    bounds: dict[tuple[str, int], tuple[_Bound, _Bound | None]] = {}
    report = Report(len(reads) + len(writes) + others, len(reads), len(writes))
    report.held = sum(1 for write in writes if write.held)
    for read in reads:
        slot = (read.key, read.proc)
        newest: Write | None
        if slot not in bounds:
            key_writes = by_key.get(read.key, [])
            # The same writes without the exemption, to count the reads it excused.
            exempting = any(w.held and w.proc != read.proc for w in key_writes)
            strict = [w._replace(held=False) for w in key_writes] if exempting else []
            bounds[slot] = (
                _bound(key_writes, read.proc, settled),
                _bound(strict, read.proc, {}) if exempting else None,
            )
        bound, strict_bound = bounds[slot]
        newest = _violated_by(read, bound)
        if newest is not None:
            report.violations.append(Violation(read, newest))
        elif strict_bound is not None and _violated_by(read, strict_bound) is not None:
            report.exempted += 1
    report.violations.sort(key=lambda v: v.read.start)
    return report
