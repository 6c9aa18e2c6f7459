"""/proc parsing, the per-attempt meter, and the shared record's memory watch protocol."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import resource
import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker import procfs
from worker.memory import MemoryWatch
from worker.meter import AttemptMeter
from worker.procfs import parse_children, parse_hwm_kb, parse_statm_resident, tree_rss_kb
from worker.record import REVOKED_HELD, SharedRecord

STATUS = (
    b"Name:\tpython\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\n"
    b"Groups:\t4 24 27 \nVmPeak:\t  912340 kB\nVmSize:\t  812340 kB\nVmLck:\t       0 kB\n"
    b"VmPin:\t       0 kB\nVmHWM:\t  230032 kB\nVmRSS:\t   25168 kB\nThreads:\t2\n"
)


def test_the_high_water_mark_is_read_from_a_status_text() -> None:
    assert parse_hwm_kb(STATUS) == 230032
    assert parse_hwm_kb(STATUS.split(b"\nVmHWM")[0]) is None  # cut short, or a kernel thread
    assert parse_hwm_kb(b"Name:\tx\nVmHWM:\t  12 MB\n") is None  # not in the unit we know
    assert parse_hwm_kb(b"Name:\tx\nVmHWM:\t  77 kB") == 77  # the last line


def test_statm_and_children_texts_are_parsed() -> None:
    assert parse_statm_resident(b"765 406 378 5 0 123 0\n") == 406
    assert parse_children(b"101 102 \n") == [101, 102]
    assert parse_children(b"") == []


def _process(root: Path, pid: int, resident: int, children: dict[int, list[int]]) -> None:
    """A fake /proc/PID: its statm and, per thread, the children it started."""
    (root / str(pid)).mkdir()
    (root / str(pid) / "statm").write_text(f"9999 {resident} 10 1 0 5 0\n")
    for tid, kids in children.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "children").write_text("".join(f"{k} " for k in kids))


def test_a_tree_s_resident_memory_sums_every_descendant_of_every_thread(tmp_path: Path) -> None:
    # Given a process with two threads, each with children, one of which has ended
    _process(tmp_path, 100, 250, {100: [101, 102], 105: [103]})
    _process(tmp_path, 101, 40, {101: [104]})
    _process(tmp_path, 103, 7, {103: []})
    _process(tmp_path, 104, 3, {104: []})
    _process(tmp_path, 200, 1000, {200: []})  # not ours
    # Then the tree holds its own pages and its descendants', not the ended one's
    assert tree_rss_kb(100, str(tmp_path)) == (250 + 40 + 7 + 3) * procfs.PAGE_KB
    assert tree_rss_kb(101, str(tmp_path)) == (40 + 3) * procfs.PAGE_KB
    assert tree_rss_kb(999, str(tmp_path)) is None  # gone


def test_a_kernel_without_children_lists_falls_back_to_a_process_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "300" / "task" / "300").mkdir(parents=True)
    (tmp_path / "300" / "statm").write_text("1 2 3 4 5 6 7\n")
    monkeypatch.setattr(procfs, "_psutil_tree_rss_kb", lambda pid: 12345)
    assert tree_rss_kb(300, str(tmp_path)) == 12345


def test_the_real_tree_of_this_process_is_at_least_its_own_rss() -> None:
    rss = tree_rss_kb(os.getpid())
    assert rss is not None
    assert rss >= parse_statm_resident(Path("/proc/self/statm").read_bytes()) * procfs.PAGE_KB


# ---------------------------------------------------------------------- the meter
def test_the_meter_reports_the_attempt_s_own_peak_not_the_process_s() -> None:
    meter = AttemptMeter()
    try:
        # Given a process that once held 128 MiB more than it holds now
        block = b"x" * (128 << 20)
        before_kb = _hwm_kb()
        del block
        # When an attempt allocates little
        meter.start()
        small = b"y" * (1 << 20)
        peak_kb, cpu_s = meter.stop()
        # Then its peak is this process's size now, well under the old mark
        assert len(small) and peak_kb < before_kb - 100 * 1024
        assert cpu_s >= 0.0
        # and one that allocates much reports it
        meter.start()
        block = b"x" * (64 << 20)
        peak_kb, _ = meter.stop()
        assert peak_kb >= 64 * 1024
        del block
    finally:
        meter.close()


def _hwm_kb() -> int:
    hwm = parse_hwm_kb(Path("/proc/self/status").read_bytes())
    assert hwm is not None
    return hwm


def _lifetime_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_the_meter_counts_the_agent_s_samples_in_the_peak() -> None:
    meter = AttemptMeter(watched=lambda: 50 * 1024 * 1024)
    meter.start()
    assert meter.stop()[0] == 50 * 1024 * 1024
    meter.close()


def test_without_clear_refs_the_meter_reports_lifetime_peaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_open = os.open

    def refuse_clear_refs(path: str, flags: int, *args: int) -> int:
        if path.endswith("clear_refs"):
            raise PermissionError(path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_clear_refs)
    meter = AttemptMeter()
    meter.start()
    peak_kb, _ = meter.stop()
    meter.close()
    assert peak_kb >= _lifetime_kb()


# ---------------------------------------------------------------------- the record
@pytest.fixture
def record() -> Iterator[SharedRecord]:
    r = SharedRecord(multiprocessing.get_context("fork"))  # no resource tracker process
    yield r
    r.close()


def _woken(record: SharedRecord) -> bool:
    readable, _, _ = select.select([record.wake_fd], [], [], 0)
    if readable:
        record.woken()
    return bool(readable)


def test_revocations_beyond_what_the_record_holds_are_refused_never_forgotten(
    record: SharedRecord,
) -> None:
    # Given a child running dispatch 1 and the agent asked to take back 2..200 meanwhile
    assert record.take(1, None, "/l/1") is None
    taken_back = {seq for seq in range(2, 201) if record.revoke(seq)}
    # then it takes back as many as the record holds, and says no to the rest
    assert taken_back == set(range(2, 2 + REVOKED_HELD))
    record.finished()
    # and the child runs exactly those it was not told were taken back
    for seq in range(2, 201):
        assert (record.take(seq, None, f"/l/{seq}") is None) == (seq not in taken_back)
        record.finished()
    # once the child has caught up, there is room again
    assert record.revoke(202)
    assert record.take(202, None, "/l/202") == "revoked"


def test_an_attempt_with_a_request_wakes_the_agent_only_when_it_is_not_watching(
    record: SharedRecord,
) -> None:
    # An attempt without a request: no wake-up, nothing to watch
    assert record.take(1, None, "/l/1", None) is None
    assert not _woken(record) and record.watched() is None
    record.finished()
    # The first with a request wakes the agent and is published with its request
    assert record.take(2, None, "/l/2", 100.0) is None
    assert _woken(record)
    watched = record.watched()
    assert watched is not None and (watched.seq, watched.memory_mb) == (2, 100.0)
    # the agent keeps watching while one runs: the next does not wake it again
    assert not record.stop_watching()
    record.finished()
    assert record.take(3, None, "/l/3", 100.0) is None
    assert not _woken(record)
    record.finished()
    # once it stopped (nothing to watch), the next one wakes it again
    assert record.stop_watching()
    assert record.take(4, None, "/l/4", 10.0) is None
    assert _woken(record)


def test_samples_count_only_for_the_attempt_they_were_taken_of(record: SharedRecord) -> None:
    assert record.take(5, None, "/l/5", 100.0) is None
    with record.sampled(5, 2048) as running:
        assert running is not None and running.peak_kb == 2048 and running.seq == 5
    with record.sampled(5, 1024) as running:
        assert running is not None and running.peak_kb == 2048  # the peak stays
    with record.sampled(4, 9999) as running:
        assert running is None  # an earlier attempt's sample
    assert record.peak_kb() == 2048
    record.finished()
    with record.sampled(5, 9999) as running:
        assert running is None  # it ended meanwhile
    assert record.take(6, None, "/l/6", None) is None
    assert record.peak_kb() == 0  # each attempt starts with no sample
    running = record.running()
    assert running is not None and running.memory_mb is None
    assert not math.isnan(running.start_time)


def test_warn_mode_warns_once_per_attempt(
    record: SharedRecord, caplog: pytest.LogCaptureFixture
) -> None:
    # Given attempts of this process requesting 1 MiB (it holds more)
    watch = MemoryWatch("warn")
    caplog.set_level(logging.WARNING, "worker.memory")
    for seq in (1, 2):
        assert record.take(seq, None, f"/l/{seq}", 1.0) is None
        watch.wake(0.0)
        # When the agent samples it three times
        for now in (0.0, 1.0, 2.0):
            assert watch.sample(record, os.getpid(), now) is None
        record.finished()
    # Then it warned once for each, and stops sampling once none runs
    assert watch.sample(record, os.getpid(), 3.0) is None
    assert watch.next_sample_at is None
    warnings = [r for r in caplog.records if "over its request of 1 MiB" in r.getMessage()]
    assert len(warnings) == 2
