"""The worker supervisor's restart policy (a fake clock, no processes), and the supervisor
itself on real forked processes that do no networking."""

from __future__ import annotations

import logging
import os
import signal
import sys

import pytest

from mailhost.supervisor import RestartPolicy, Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_deaths_hours_apart_never_give_up_and_never_back_off() -> None:
    clock = FakeClock()
    policy = RestartPolicy(interval=60, burst=5, delay=0.1, clock=clock)
    for _ in range(50):
        assert policy.record_death() == pytest.approx(0.1)
        assert not policy.give_up(alive=0)
        clock.now += 3 * 3600


def test_a_burst_backs_off_exponentially_up_to_the_cap() -> None:
    clock = FakeClock()
    policy = RestartPolicy(interval=60, burst=5, delay=0.1, max_delay=1.0, clock=clock)
    delays = []
    for _ in range(6):
        delays.append(policy.record_death())
        clock.now += 0.01
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@pytest.mark.parametrize(
    ("deaths", "alive", "gives_up"),
    [
        (4, 0, False),  # below the burst limit
        (5, 1, False),  # burst reached, but a worker still serves
        (50, 3, False),
        (5, 0, True),  # burst reached and nothing serves
    ],
)
def test_gives_up_only_at_the_burst_limit_with_no_worker_alive(
    deaths: int, alive: int, gives_up: bool
) -> None:
    clock = FakeClock()
    policy = RestartPolicy(interval=60, burst=5, clock=clock)
    for _ in range(deaths):
        policy.record_death()
        clock.now += 1
    assert policy.give_up(alive=alive) is gives_up


def test_the_window_slides() -> None:
    clock = FakeClock()
    policy = RestartPolicy(interval=60, burst=5, delay=0.1, clock=clock)
    for _ in range(5):
        policy.record_death()
    assert policy.give_up(alive=0)
    clock.now += 61
    assert not policy.give_up(alive=0)
    assert policy.recent_deaths() == 0
    assert policy.record_death() == pytest.approx(0.1)


def _child_exits_with_its_signal_state(_slot: int) -> None:
    # 0 only when the child inherited none of the supervisor's signal setup.
    clean = (
        signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        and signal.getsignal(signal.SIGINT) == signal.SIG_DFL
        and signal.set_wakeup_fd(-1) == -1
        and not (signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGTERM, signal.SIGINT})
    )
    sys.stdout.flush()
    os._exit(0 if clean else 7)


def test_a_crash_loop_backs_off_then_gives_up_and_children_inherit_no_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = RestartPolicy(interval=60, burst=4, delay=0.01, max_delay=0.05)
    supervisor = Supervisor(
        name="test", workers=2, target=_child_exits_with_its_signal_state, policy=policy
    )
    with caplog.at_level(logging.INFO, logger="mailhost.serve"):
        status = supervisor.run()
    assert status == 1
    exits = [r.getMessage() for r in caplog.records if "exited with status" in r.getMessage()]
    # The burst limit is reached at the 4th death; the other worker may still be alive then
    # (just restarted), and the supervisor never gives up while one is: it gives up at the
    # first death after that with no worker left, so 4 or a few more exits.
    assert len(exits) >= 4, exits
    assert not any("giving up" in line for line in exits[:-1]), exits
    assert all("status 0" in line for line in exits), exits  # no child saw our handler
    assert "giving up" in exits[-1]
    assert signal.getsignal(signal.SIGTERM) is not supervisor._on_signal
