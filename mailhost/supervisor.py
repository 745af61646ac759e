"""The prefork worker supervisor: fork N workers, restart the dead with back-off, drain on signal.

Theory of operation. ``Supervisor.run`` forks one process per slot and then loops on the
workers' sentinels plus a self-pipe (``signal.set_wakeup_fd``). The signal handler only
records the signal number; the loop acts on it (SIGTERM/SIGINT: pass SIGTERM to every worker
and wait for them to drain; a second SIGINT: SIGKILL). A worker that exits while we are not
stopping is restarted after the delay its ``RestartPolicy`` gives, so a crash loop backs off
instead of spinning, and the supervisor gives up (exit 1, for systemd or Docker to act on)
only when the burst limit is reached AND no worker is left alive: while one worker serves, the
port keeps answering, so giving up would only make things worse.

Signals are blocked around each fork, and the child resets SIGINT/SIGTERM to their defaults
and drops the wakeup fd before unblocking, so the parent's handler never runs in a child.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("mailhost.serve")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RestartPolicy:
    """Counts worker deaths in a sliding window and says how long to wait before a restart.

    Modelled on systemd: ``interval``/``burst`` are ``StartLimitIntervalSec``/``StartLimitBurst``
    and ``delay`` is ``RestartSec``; the delay doubles with every death in the window up to
    ``max_delay`` (systemd's ``RestartSteps``/``RestartMaxDelaySec``). Deaths hours apart never
    add up: only those in the last ``interval`` seconds count.
    """

    def __init__(
        self,
        *,
        interval: float = 60.0,
        burst: int = 5,
        delay: float = 0.1,
        max_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.burst = burst
        self.delay = delay
        self.max_delay = max_delay
        self._clock = clock
        self._deaths: deque[float] = deque()

    def _prune(self) -> None:
        horizon = self._clock() - self.interval
        while self._deaths and self._deaths[0] <= horizon:
            self._deaths.popleft()

    def recent_deaths(self) -> int:
        self._prune()
        return len(self._deaths)

    def record_death(self) -> float:
        """Note one death now; the seconds to wait before restarting that worker."""
        self._deaths.append(self._clock())
        n = self.recent_deaths()
        return float(min(self.max_delay, self.delay * 2 ** (n - 1)))

    def give_up(self, *, alive: int) -> bool:
        """True when the burst limit is reached in the window and no worker is alive."""
        return alive == 0 and self.recent_deaths() >= self.burst


def reset_signals_in_child() -> None:
    """First thing in a forked worker: default handlers, no wakeup fd, signals unblocked."""
    signal.set_wakeup_fd(-1)
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


class Supervisor:
    """Keeps ``workers`` processes running ``target(slot)``; ``run`` returns the exit status."""

    def __init__(
        self,
        *,
        name: str,
        workers: int,
        target: Callable[[int], None],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        # Called with the pid of every worker reaped (the metrics drop its live gauges).
        self.on_exit = on_exit
        self.workers = workers
        self.target = target
        self.policy = policy or RestartPolicy(clock=clock)
        self._clock = clock
        self._mp = multiprocessing.get_context("fork")
        self._children: dict[int, multiprocessing.process.BaseProcess] = {}
        self._due: dict[int, float] = {}  # slot -> when to restart it
        self._signals: list[int] = []
        self._stopping = False
        self._status = 0
        self._pipe: tuple[int, int] | None = None

    # -- the handler: records only ----------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    # -- children ---------------------------------------------------------------------------
    def _child_main(self, slot: int) -> None:
        reset_signals_in_child()
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
        self.target(slot)

    def _spawn(self, slot: int) -> None:
        proc = self._mp.Process(
            target=self._child_main, args=(slot,), name=f"mailhost-{self.name}-{slot}"
        )
        # Blocked across the fork: a signal arriving now waits for the child's own handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        self._children[slot] = proc
        log.info("started %s worker %d (pid %s)", self.name, slot, proc.pid)

    def _send_all(self, sig: int) -> None:
        for proc in self._children.values():
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, sig)

    def _alive(self) -> int:
        return sum(1 for proc in self._children.values() if proc.is_alive())

    # -- the loop ---------------------------------------------------------------------------
    def _act_on_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if self._stopping and signum == signal.SIGINT:
                log.warning("second interrupt: killing the %s workers", self.name)
                self._send_all(signal.SIGKILL)
            elif not self._stopping:
                log.info("%s: stopping the %s workers", signal.Signals(signum).name, self.name)
                self._stop()

    def _stop(self) -> None:
        self._stopping = True
        self._due.clear()
        self._send_all(signal.SIGTERM)

    def _reap(self) -> None:
        for slot, proc in list(self._children.items()):
            if proc.is_alive():
                continue
            proc.join()
            del self._children[slot]
            code = proc.exitcode
            if self.on_exit is not None and proc.pid is not None:
                try:
                    self.on_exit(proc.pid)
                except Exception:
                    log.exception("after %s worker %d (pid %s) exited", self.name, slot, proc.pid)
            if self._stopping:
                if code != 0:
                    self._status = 1
                continue
            delay = self.policy.record_death()
            if self.policy.give_up(alive=self._alive()):
                log.error(
                    "%s worker %d exited with status %s; %d deaths in %.0f s and no worker "
                    "is serving: giving up",
                    self.name,
                    slot,
                    code,
                    self.policy.recent_deaths(),
                    self.policy.interval,
                )
                self._status = 1
                self._stop()
                continue
            log.error(
                "%s worker %d exited with status %s; restarting in %.1f s",
                self.name,
                slot,
                code,
                delay,
            )
            self._due[slot] = self._clock() + delay

    def _restart_due(self) -> None:
        now = self._clock()
        for slot, due in list(self._due.items()):
            if due <= now:
                del self._due[slot]
                self._spawn(slot)

    def _drain_pipe(self) -> None:
        assert self._pipe is not None
        try:
            while os.read(self._pipe[0], 512):
                pass
        except BlockingIOError:
            pass

    def run(self) -> int:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        previous_fd = signal.set_wakeup_fd(write_fd)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            for slot in range(self.workers):
                self._spawn(slot)
            while self._children or self._due:
                timeout = None
                if self._due:
                    timeout = max(0.0, min(self._due.values()) - self._clock())
                waitables: list[int] = [read_fd]
                waitables += [p.sentinel for p in self._children.values()]
                multiprocessing.connection.wait(waitables, timeout=timeout)
                self._drain_pipe()
                self._act_on_signals()
                self._reap()
                self._act_on_signals()
                self._restart_due()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            os.close(read_fd)
            os.close(write_fd)
            self._pipe = None
        return self._status
