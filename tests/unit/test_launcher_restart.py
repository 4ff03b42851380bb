"""The launcher's restart policy as a pure core: delays, the reset after a stable run, and the
crash-loop limit, on an injected clock (nothing sleeps)."""

from __future__ import annotations

import pytest

from llmvox_launch.restart import GiveUp, Restart, RestartPolicy, RestartTracker

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_cap() -> None:
    policy = RestartPolicy(first_delay_s=0.5, factor=2.0, max_delay_s=3.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_child_that_was_ready_is_restarted_with_growing_delays() -> None:
    clock = Clock()
    tracker = RestartTracker(RestartPolicy(stable_after_s=30.0), clock)
    decisions = []
    for _ in range(4):
        tracker.started()
        clock.now += 2.0
        tracker.ready()
        clock.now += 1.0  # dies soon after getting ready: never stable
        decisions.append(tracker.exited())
    assert decisions == [Restart(0.5, 1), Restart(1.0, 2), Restart(2.0, 3), Restart(4.0, 4)]


def test_a_stable_run_resets_the_attempts() -> None:
    clock = Clock()
    tracker = RestartTracker(RestartPolicy(stable_after_s=30.0), clock)
    for _ in range(3):
        tracker.started()
        tracker.ready()
        tracker.exited()
    tracker.started()
    tracker.ready()
    clock.now += 30.0
    assert tracker.exited() == Restart(0.5, 1)


def test_failures_before_ready_hit_the_crash_loop_limit() -> None:
    clock = Clock()
    tracker = RestartTracker(RestartPolicy(crash_loop_failures=3, crash_loop_window_s=60.0), clock)
    tracker.started()
    assert tracker.exited() == Restart(0.5, 1)
    tracker.started()
    assert tracker.exited() == Restart(1.0, 2)
    tracker.started()
    assert tracker.exited() == GiveUp(3, 60.0)


def test_start_up_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    tracker = RestartTracker(RestartPolicy(crash_loop_failures=2, crash_loop_window_s=10.0), clock)
    tracker.started()
    assert isinstance(tracker.exited(), Restart)
    clock.now += 11.0
    tracker.started()
    assert isinstance(tracker.exited(), Restart)
    clock.now += 1.0
    tracker.started()
    assert tracker.exited() == GiveUp(2, 10.0)


def test_getting_ready_forgives_earlier_start_up_failures() -> None:
    clock = Clock()
    tracker = RestartTracker(RestartPolicy(crash_loop_failures=2), clock)
    tracker.started()
    tracker.exited()
    tracker.started()
    tracker.ready()
    tracker.exited()  # died after it was ready: not a start-up failure
    tracker.started()
    assert isinstance(tracker.exited(), Restart)  # one start-up failure since it was ready


@pytest.mark.parametrize(
    "bad",
    [
        {"first_delay_s": -1.0},
        {"first_delay_s": 2.0, "max_delay_s": 1.0},
        {"factor": 0.5},
        {"crash_loop_failures": 0},
    ],
)
def test_invalid_policies_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        RestartPolicy(**bad)  # type: ignore[arg-type]
