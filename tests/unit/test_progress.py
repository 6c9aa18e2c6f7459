"""What every driver does alike for watchers: progress on a period, control answers."""

from __future__ import annotations

from broker.drivers.progress import Progress, answer_control
from common.protocol import Cancel, StatusRequest
from common.status import RunStatus


def status(now: float) -> RunStatus:
    return RunStatus(elapsed_s=now, total=3, by_label={"a": {"succeeded": 1}})


def test_progress_is_reported_once_a_period_and_not_without_a_watcher() -> None:
    seen: list[float] = []
    progress = Progress(lambda s: seen.append(s.elapsed_s), interval_s=5.0)
    for now in (0.0, 1.0, 4.9, 5.0, 9.0, 10.1):
        progress.tick(status, now)
    assert seen == [0.0, 5.0, 10.1]
    assert progress.next_at() == 15.1
    assert Progress(None, 5.0).next_at() is None


def test_control_requests_are_answered_with_the_status_and_a_cancel_stops() -> None:
    reply, stop = answer_control(StatusRequest(), status(2.0))
    assert stop is None and reply.status["total"] == 3
    _, drain = answer_control(Cancel(abort=False), status(2.0))
    _, abort = answer_control(Cancel(abort=True), status(2.0))
    assert drain is not None and drain.graceful
    assert abort is not None and not abort.graceful
