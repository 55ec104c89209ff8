"""Per-host pacing across the threads of a download worker, and the schedule of one shard's rows.

Every request to a host goes through :class:`Scheduler`, which hands rows to the download threads so that,
per host (the URL's host name, lower case):

* at most ``concurrency`` requests are in flight, and request starts are at least ``1 / rate`` seconds apart
  (``Crawl-delay`` from robots.txt lengthens the interval and makes the host serial);
* after ``429``/``503`` the host waits for ``Retry-After`` (seconds or a date; up to ``max_retry_after``),
  after other failures (5xx, timeouts, refused connections) for an exponential backoff with jitter
  (``backoff_base * 2**(failures-1)``, times 0.5-1.5, at most ``backoff_max``); the failed row is tried again
  (``retries``) when the host may be asked again;
* a host that fails ``fail_after`` times in a row is paused for ``pause`` seconds; one that keeps failing after
  ``max_pauses`` pauses is given up: its remaining rows fail as ``host_paced_out``.

Rows are queued per host and a thread takes the next row of a host that may be asked *now*, so a slow or paced
host never holds the threads while other hosts have work. Host state (:class:`HostState`) lives as long as
the worker process (:data:`HOSTS`), across the shards it downloads; one shard runs at a time per process.
"""
from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Set, Tuple

PACED_OUT = "host_paced_out"


@dataclass(frozen=True)
class PacingConfig:
    """Per-host limits (picklable; they travel to the workers). Defaults: docs/corpus.md."""

    concurrency: int = 4
    rate: float = 10.0  # request starts per second per host
    retries: int = 1
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 120.0
    fail_after: int = 10
    pause: float = 120.0
    max_pauses: int = 1

    def check(self) -> None:
        if self.concurrency < 1:
            raise ValueError("host concurrency must be at least 1")
        if not self.rate > 0:
            raise ValueError("host rate must be positive (requests per second)")
        if self.retries < 0 or self.fail_after < 1 or self.max_pauses < 0:
            raise ValueError("retries and max_pauses must be >= 0, fail_after >= 1")
        if min(self.backoff_base, self.backoff_max, self.max_retry_after, self.pause) < 0:
            raise ValueError("backoff, Retry-After and pause durations must be >= 0")


class HostState:
    """What a worker process knows of one host: slots in use, when it may be asked next, its health."""

    def __init__(self, name: str, config: PacingConfig) -> None:
        self.name = name
        self.cap = config.concurrency
        self.interval = 1.0 / config.rate
        self.crawl_delay: Optional[float] = None
        self.in_flight = 0
        self.last_start = 0.0  # monotonic: the latest request start
        self.next_start = 0.0  # monotonic: the earliest next request start (rate / crawl-delay)
        self.not_before = 0.0  # monotonic: Retry-After, backoff, pause
        self.asked_until = 0.0  # monotonic: the latest Retry-After's end
        self.failures = 0  # consecutive
        self.pauses = 0
        self.gone: Optional[str] = None  # set once the host is given up: the rows' failure reason

    def set_crawl_delay(self, delay: Optional[float], config: PacingConfig) -> None:
        if delay and delay > 0:
            self.crawl_delay = delay
            self.interval = max(1.0 / config.rate, delay)
            self.cap = 1
            self.next_start = max(self.next_start, self.last_start + self.interval)  # robots.txt's request counts
        else:
            self.crawl_delay = None
            self.interval = 1.0 / config.rate
            self.cap = config.concurrency

    def ready_at(self) -> float:
        return max(self.next_start, self.not_before)


#: Host states of this worker process (name -> state), shared by the shards it downloads one after another.
HOSTS: Dict[str, HostState] = {}
_HOSTS_LOCK = threading.Lock()


def host_state(name: str, config: PacingConfig) -> HostState:
    with _HOSTS_LOCK:
        st = HOSTS.get(name)
        if st is None:
            st = HOSTS[name] = HostState(name, config)
        return st


# ------------------------------------------------------------------------------------------ outcomes

OK = "ok"  # the host answered (also a 404, an opt-out ...)
THROTTLED = "throttled"  # 429 / 503
FAILED = "failed"  # 5xx, timeout, refused or reset connection, DNS failure


@dataclass
class Task:
    """One row to download: its index in the shard, current URL and host, tries so far."""

    index: int
    url: str
    host: str
    tries: int = 0
    redirects: int = 0
    robots_url: Optional[str] = None  # set when the thread must fetch this robots.txt first
    fail: Optional[str] = None  # set when the row fails without a request (the reason)


@dataclass
class PacingStats:
    """What pacing did during one shard (recorded in its ``_stats.json`` under ``pacing``)."""

    hosts: Set[str] = field(default_factory=set)
    requests: int = 0
    robots_fetches: int = 0
    throttled: int = 0  # 429/503 answers
    retry_after_max_s: float = 0.0
    backoffs: int = 0
    retries: int = 0
    waited_s: float = 0.0  # host-seconds a host had rows but had to wait (rate, crawl-delay, backoff, pause)
    max_in_flight: int = 0  # the most requests in flight to one host
    crawl_delays: Dict[str, float] = field(default_factory=dict)
    paused: List[str] = field(default_factory=list)
    given_up: List[str] = field(default_factory=list)

    def to_dict(self, limit: int = 20) -> Dict[str, Any]:
        return {"hosts": len(self.hosts), "requests": self.requests, "robots_fetches": self.robots_fetches,
                "throttled": self.throttled, "retry_after_max_s": round(self.retry_after_max_s, 3),
                "backoffs": self.backoffs, "retries": self.retries, "waited_s": round(self.waited_s, 3),
                "max_in_flight_per_host": self.max_in_flight,
                "crawl_delays": dict(sorted(self.crawl_delays.items())[:limit]),
                "paused_hosts": sorted(self.paused)[:limit], "given_up_hosts": sorted(self.given_up)[:limit]}


class Scheduler:
    """Hands the rows of one shard to download threads under the per-host limits (module docstring).

    ``take()`` blocks until a row may start (or returns None when every row is done); every task taken is
    given back with exactly one of :meth:`done` (the row has its outcome), :meth:`again` (try it again:
    after a failure, a fetched robots.txt, or a redirect to another host). Before a row's request,
    ``precheck(task)`` may refuse it (a reason) and ``robots_state(task)`` says "ok", "refused: <reason>",
    "wait" (another thread is fetching the site's robots.txt) or "fetch" (having set ``task.robots_url``:
    this request fetches robots.txt, then the row is queued again in front). Rows refused this way cost no
    request and no pacing slot.
    """

    def __init__(self, tasks: List[Task], config: PacingConfig, robots_state=None, precheck=None) -> None:
        self.config = config
        self.cond = threading.Condition()
        self.queues: Dict[str, Deque[Task]] = {}
        self.immediate: Deque[Task] = deque()  # rows that fail without a request (empty URL ...)
        self.ready: Deque[str] = deque()
        self.timed: List[Tuple[float, int, str]] = []
        self.parked: Dict[str, str] = {}  # host -> why it is not scheduled: "slots" (at cap) or "robots"
        self.scheduled: Set[str] = set()
        self._seq = itertools.count()
        self.pending = 0  # tasks not yet given back
        self.closed = False
        self._timer = False  # a thread is waiting for the next timed host
        self.robots_state = robots_state or (lambda task: "ok")
        self.precheck = precheck or (lambda task: None)
        self.stats = PacingStats()
        self._rng = random.Random()
        for t in tasks:
            self._enqueue(t)

    # -- queues (under self.cond)
    def _enqueue(self, task: Task, front: bool = False) -> None:
        self.pending += 1
        if task.fail is not None or not task.host:
            self.immediate.append(task)
            return
        q = self.queues.get(task.host)
        if q is None:
            q = self.queues[task.host] = deque()
            self.stats.hosts.add(task.host)
        (q.appendleft if front else q.append)(task)
        self._schedule(task.host)

    def _schedule(self, host: str, at: float = 0.0) -> None:
        if host in self.scheduled or host in self.parked or not self.queues.get(host):
            return
        self.scheduled.add(host)
        if at <= time.monotonic():
            self.ready.append(host)
        else:
            heapq.heappush(self.timed, (at, next(self._seq), host))

    def _due(self, st: Optional[HostState]) -> float:
        """When a host's next row should be looked at: when it may be asked again, or now when it asked to wait
        longer than ``max_retry_after`` (its rows then fail at once, see :meth:`_next_from`)."""
        if st is None:
            return 0.0
        now = time.monotonic()
        return now if st.asked_until - now > self.config.max_retry_after else st.ready_at()

    def _unpark(self, host: str, why: str) -> None:
        if self.parked.get(host) == why:
            del self.parked[host]
            self._schedule(host, self._due(HOSTS.get(host)))

    # -- the threads' side
    def take(self) -> Optional[Task]:
        # Few wake-ups: one waiting thread (the timer) sleeps until the next host's time, the others until they
        # are notified, one at a time (a thread that takes a task wakes the next when more work is there).
        with self.cond:
            while True:
                if self.closed:
                    return None
                task = self._take_now()
                if task is not None:
                    if self.immediate or self.ready or (self.timed and not self._timer):
                        self.cond.notify()
                    return task
                if self.pending == 0:
                    self.cond.notify_all()
                    return None
                if self.timed and not self._timer:
                    self._timer = True
                    try:
                        self.cond.wait(self.timed[0][0] - time.monotonic())
                    finally:
                        self._timer = False
                else:
                    self.cond.wait()

    def _take_now(self) -> Optional[Task]:
        if self.immediate:
            return self.immediate.popleft()
        now = time.monotonic()
        while self.timed and self.timed[0][0] <= now:
            self.ready.append(heapq.heappop(self.timed)[2])
        while self.ready:
            task = self._next_from(self.ready.popleft(), now)
            if task is not None:
                return task
        return None

    def _next_from(self, host: str, now: float) -> Optional[Task]:
        """The next task of ``host`` if it may start now (slot reserved), else None (host re-filed)."""
        self.scheduled.discard(host)
        q = self.queues.get(host)
        if not q:
            return None
        st = host_state(host, self.config)
        task = q[0]
        reason = st.gone or self.precheck(task)
        if reason is None and st.asked_until - now > self.config.max_retry_after:
            reason = (f"{PACED_OUT} ({host} asked to wait {st.asked_until - now:.0f}s, more than "
                      f"--max-retry-after {self.config.max_retry_after:g}s)")
        if reason is None:
            state = self.robots_state(task)
            if state.startswith("refused: "):
                reason = state[len("refused: "):]
            elif state == "wait":
                self.parked[host] = "robots"
                return None
            # "fetch": robots_state has set task.robots_url; this request fetches that robots.txt
        if reason is not None:
            q.popleft()
            task.fail = reason
            self._schedule(host)
            return task
        if st.in_flight >= st.cap:
            self.parked[host] = "slots"
            return None
        ready = st.ready_at()
        if ready > now:
            self.stats.waited_s += ready - now
            self._schedule(host, ready)
            return None
        q.popleft()
        st.in_flight += 1
        st.last_start = now
        st.next_start = now + st.interval
        self.stats.requests += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, st.in_flight)
        if task.robots_url:
            self.stats.robots_fetches += 1
            self.parked[host] = "robots"  # its other rows wait for the file
        elif st.in_flight < st.cap:
            self._schedule(host, st.next_start)
        else:
            self.parked[host] = "slots"
        return task

    def _release(self, task: Task, outcome: str, retry_after: Optional[float]) -> None:
        st = host_state(task.host, self.config)
        st.in_flight = max(0, st.in_flight - 1)
        now = time.monotonic()
        if outcome == OK:
            st.failures = 0
        elif outcome in (THROTTLED, FAILED):
            st.failures += 1
            if outcome == THROTTLED:
                self.stats.throttled += 1
            if retry_after is not None:
                wait = retry_after
                st.asked_until = max(st.asked_until, now + retry_after)
                self.stats.retry_after_max_s = max(self.stats.retry_after_max_s, retry_after)
            else:
                wait = min(self.config.backoff_max, self.config.backoff_base * 2 ** min(st.failures - 1, 30))
                wait *= 0.5 + self._rng.random()
                self.stats.backoffs += 1
            st.not_before = max(st.not_before, now + wait)
            if st.failures >= self.config.fail_after:
                if st.pauses < self.config.max_pauses:
                    st.pauses += 1
                    st.failures = 0
                    st.not_before = max(st.not_before, now + self.config.pause)
                    self.stats.paused.append(st.name)
                else:
                    st.gone = (f"{PACED_OUT} ({st.name} failed {self.config.fail_after} times in a row after "
                               f"{st.pauses} pause(s) of {self.config.pause:g}s)")
                    self.stats.given_up.append(st.name)
        self._unpark(task.host, "slots")
        if task.robots_url:
            task.robots_url = None
            self._unpark(task.host, "robots")
        self._schedule(task.host, self._due(st))

    def done(self, task: Task, outcome: Optional[str] = None, retry_after: Optional[float] = None) -> None:
        """The row has its outcome; ``outcome`` (OK/THROTTLED/FAILED) when a request was made."""
        with self.cond:
            if outcome is not None:
                self._release(task, outcome, retry_after)
            self.pending -= 1
            self._wake()

    def again(self, task: Task, outcome: Optional[str] = None, retry_after: Optional[float] = None, *,
              front: bool = False) -> None:
        """Queue the row again (after ``outcome`` of its request, if one was made)."""
        with self.cond:
            if outcome is not None:
                self._release(task, outcome, retry_after)
            self.pending -= 1
            self._enqueue(task, front=front)
            self._wake()

    def _wake(self) -> None:
        """After a task came back: every thread when all is done (they return), else one (it takes the next task,
        becomes the timer, or goes back to sleep)."""
        if self.pending == 0:
            self.cond.notify_all()
        else:
            self.cond.notify()

    def close(self) -> None:
        """Stop handing out rows (the shard ended early): waiting threads return."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def note_crawl_delay(self, host: str, delay: Optional[float]) -> None:
        with self.cond:
            st = host_state(host, self.config)
            st.set_crawl_delay(delay, self.config)
            if delay:
                self.stats.crawl_delays[host] = delay
