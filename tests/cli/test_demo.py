"""The ``cachewise demo``, run in-process with small settings."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from cachewise.cli import main
from cachewise.cli._demo import (
    HEADERS,
    Database,
    ModeResult,
    Progress,
    User,
    ZipfSampler,
    _mixed,
    format_table,
    run_demo,
    run_modes,
    verdict,
)

HERD = 30


@pytest.fixture(scope="module")
def results() -> dict[str, ModeResult]:
    modes = run_modes(seconds=1.0, threads=4, herd=HERD)
    return {r.mode: r for r in modes}


def test_runs_the_three_modes_in_order(results: dict[str, ModeResult]) -> None:
    assert list(results) == ["no cache", "naive cache-aside", "cachewise"]
    for r in results.values():
        assert r.reads > 0
        assert r.writes > 0
        assert r.herd_size == HERD
        assert 0.0 <= r.p50_ms <= r.p99_ms


def test_cachewise_sends_one_query_for_the_herd(results: dict[str, ModeResult]) -> None:
    assert results["cachewise"].herd_queries == 1
    assert results["no cache"].herd_queries == HERD


def test_cachewise_never_reads_stale(results: dict[str, ModeResult]) -> None:
    assert results["cachewise"].stale_reads == 0
    assert results["no cache"].stale_reads == 0


def test_cachewise_spares_the_database(results: dict[str, ModeResult]) -> None:
    no_cache, cw = results["no cache"], results["cachewise"]
    assert no_cache.db_queries == no_cache.reads
    assert cw.db_queries < no_cache.db_queries
    assert cw.db_queries < cw.reads


def test_hit_ratio_only_with_a_cache(results: dict[str, ModeResult]) -> None:
    assert results["no cache"].hit_ratio is None
    for mode in ("naive cache-aside", "cachewise"):
        ratio = results[mode].hit_ratio
        assert ratio is not None
        assert 0.0 < ratio < 1.0


def test_table_and_verdict(results: dict[str, ModeResult]) -> None:
    lines = format_table(list(results.values())).splitlines()
    assert len(lines) == 2 + len(results)
    assert len({len(line) for line in lines}) == 1  # every column lines up
    for header in HEADERS:
        assert header in lines[0]
    said = verdict(list(results.values()))
    assert said[0].startswith(f"cachewise: 1 DB query for a {HERD}-thread herd")
    assert verdict([]) == []


def test_run_demo_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(seconds=0.3, threads=2, progress=False) == 0
    captured = capsys.readouterr()
    for header in ("mode", "DB queries", "herd queries", "p50 ms", "p99 ms", "hit ratio"):
        assert header in captured.out
    assert "stale reads" in captured.out
    for mode in ("no cache", "naive cache-aside", "cachewise"):
        assert f"\n{mode} " in captured.out
    assert "cachewise: 1 DB query for a 100-thread herd" in captured.out
    assert captured.err == ""  # no progress output when disabled


def test_cli_rejects_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seconds", "0"]) == 2
    assert run_demo(seconds=1.0, threads=0, progress=False) == 2
    assert "--seconds must be > 0" in capsys.readouterr().err


def test_stale_reads_are_detected(tmp_path: Path) -> None:
    """The stale-read check is not vacuous: a cache never invalidated is caught."""

    class ForgetfulCache:
        label = "never invalidated"

        def __init__(self, db: Database) -> None:
            self._db = db
            self._entries: dict[int, User] = {}

        def read(self, user_id: int) -> User:
            user = self._entries.get(user_id)
            if user is None:
                user = self._entries[user_id] = self._db.read_user(user_id)
            return user

        def invalidate(self, user_id: int) -> None:
            pass  # the bug

        def counts(self) -> tuple[int, int] | None:
            return None

        def close(self) -> None:
            pass

    db = Database(str(tmp_path / "users.sqlite3"), users=50)
    try:
        outcome = _mixed(
            db,
            ForgetfulCache(db),
            seconds=0.5,
            threads=2,
            writers=1,
            seed=1,
            tick=lambda fraction: None,
        )
    finally:
        db.close()
    assert outcome.writes > 0
    assert outcome.stale_reads > 0


def test_database_reads_and_writes(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "users.sqlite3"), users=10, query_delay=0.0)
    try:
        assert db.read_user(3) == User(3, "user-3", 0)
        assert db.bump_version(3) == 1
        assert db.bump_version(3) == 2
        assert db.read_user(3).version == 2
        assert db.queries == 2
        with pytest.raises(LookupError):
            db.read_user(11)
    finally:
        db.close()


def test_zipf_sampler_is_skewed_and_in_range() -> None:
    sampler = ZipfSampler(100, s=1.1)
    rng = random.Random(7)
    draws = [sampler.sample(rng) for _ in range(20_000)]
    assert min(draws) >= 1
    assert max(draws) <= 100
    counts = [draws.count(k) for k in (1, 2, 10, 100)]
    assert counts == sorted(counts, reverse=True)
    # P(1) = 1 / sum(k**-1.1 for k in 1..100), about 0.227.
    assert 0.20 < counts[0] / len(draws) < 0.25


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_on_a_terminal() -> None:
    stream = _FakeTerminal()
    progress = Progress(enabled=True, stream=stream)
    progress.phase("cachewise: mixed workload", 0.5, 0.5)
    progress.update(1.0)
    progress.finish()
    text = stream.getvalue()
    assert "\r[" in text
    assert " 50%  cachewise: mixed workload" in text
    assert "100%" in text
    assert text.endswith("\r")  # the bar is erased at the end
    assert "\n" not in text


def test_progress_prints_a_line_per_phase_elsewhere() -> None:
    stream = io.StringIO()
    progress = Progress(enabled=True, stream=stream)
    progress.phase("no cache: thundering herd", 0.0, 0.1)
    progress.update(0.5)
    progress.phase("no cache: mixed workload", 0.1, 0.9)
    progress.finish()
    assert stream.getvalue() == "no cache: thundering herd ...\nno cache: mixed workload ...\n"


def test_progress_disabled_prints_nothing() -> None:
    stream = _FakeTerminal()
    progress = Progress(enabled=False, stream=stream)
    progress.phase("anything", 0.0, 1.0)
    progress.update(0.5)
    progress.finish()
    assert stream.getvalue() == ""
