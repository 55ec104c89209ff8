"""The per-host scheduler without a network: caps, rate, Retry-After, backoff, pause and give-up, no blocking of
other hosts by a paced one."""
from __future__ import annotations

import threading
import time

import pytest

from ccmb.corpus.download import pacing
from ccmb.corpus.download.pacing import FAILED, OK, THROTTLED, PacingConfig, Scheduler, Task


@pytest.fixture(autouse=True)
def fresh_hosts():
    pacing.HOSTS.clear()
    yield
    pacing.HOSTS.clear()


def _run(sched: Scheduler, threads: int, work, refused=None, front=False):
    """Run ``threads`` threads taking tasks; ``work(task)`` returns the outcome or ("again", outcome, retry_after);
    rows refused without a request go to ``refused``."""
    log = []
    lock = threading.Lock()

    def worker():
        while True:
            task = sched.take()
            if task is None:
                return
            if task.fail:
                refused.append(task.fail)
                sched.done(task)
                continue
            start = time.monotonic()
            result = work(task)
            with lock:
                log.append((task.host, task.index, start, time.monotonic()))
            if isinstance(result, tuple):
                sched.again(task, result[1], result[2], front=front)
            else:
                sched.done(task, result)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not any(t.is_alive() for t in ts)
    return log


def _max_overlap(spans):
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = best = 0
    for _, d in events:
        now += d
        best = max(best, now)
    return best


def test_concurrency_cap_and_rate_per_host():
    tasks = [Task(i, f"http://{h}/x", h) for i, h in enumerate(["a"] * 12 + ["b"] * 12)]
    sched = Scheduler(tasks, PacingConfig(concurrency=3, rate=20))
    log = _run(sched, 8, lambda t: time.sleep(0.1) or OK)
    assert len(log) == 24 and sched.pending == 0
    for host in "ab":
        spans = [(s, e) for h, _, s, e in log if h == host]
        starts = sorted(s for s, _ in spans)
        assert 2 <= _max_overlap(spans) <= 3  # never exceeded (and used)
        assert starts[-1] - starts[0] >= 11 * 0.05 - 0.01  # 20 per second over the run
        assert min(y - x for x, y in zip(starts, starts[1:])) >= 0.02  # and no burst
    assert sched.stats.max_in_flight == 3 and sched.stats.requests == 24


def test_a_paced_host_does_not_hold_the_threads():
    """One slow, serial host (1 request/s) and a fast one: the fast host's rows finish long before."""
    tasks = [Task(i, "http://slow/x", "slow") for i in range(4)] + [Task(10 + i, "http://fast/x", "fast")
                                                                    for i in range(20)]
    sched = Scheduler(tasks, PacingConfig(concurrency=1, rate=1))
    pacing.host_state("fast", PacingConfig(concurrency=4, rate=1000)).cap = 4
    pacing.host_state("fast", PacingConfig()).interval = 0.001
    t0 = time.monotonic()
    log = _run(sched, 4, lambda t: time.sleep(0.02) or OK)
    fast_end = max(e for h, _, _, e in log if h == "fast") - t0
    slow_end = max(e for h, _, _, e in log if h == "slow") - t0
    assert fast_end < 0.6 and slow_end >= 3.0, (fast_end, slow_end)


def test_retry_after_and_backoff_hold_the_host():
    calls = {}

    def work(task):
        n = calls.get(task.index, 0)
        calls[task.index] = n + 1
        if task.index == 0 and n == 0:
            return ("again", THROTTLED, 0.5)  # 429 Retry-After: 0.5
        if task.index == 1 and n == 0:
            return ("again", FAILED, None)  # 5xx: backoff 0.2 * (0.5..1.5)
        return OK

    tasks = [Task(0, "http://t/x", "t"), Task(1, "http://u/x", "u")]
    sched = Scheduler(tasks, PacingConfig(concurrency=2, rate=100, backoff_base=0.2))
    log = _run(sched, 2, work)
    t = sorted(s for h, _, s, _ in log if h == "t")
    u = sorted(s for h, _, s, _ in log if h == "u")
    assert t[1] - t[0] >= 0.5 and 0.1 <= u[1] - u[0] <= 0.35
    assert sched.stats.throttled == 1 and sched.stats.backoffs == 1 and sched.stats.retry_after_max_s == 0.5


def test_a_failing_host_is_paused_then_given_up():
    tasks = [Task(i, "http://dead/x", "dead") for i in range(10)]
    sched = Scheduler(tasks, PacingConfig(concurrency=1, rate=1000, backoff_base=0.01, fail_after=2, pause=0.3,
                                          max_pauses=1))
    failures = []
    t0 = time.monotonic()
    _run(sched, 1, lambda task: FAILED, refused=failures)
    assert len(failures) == 6 and all(f.startswith("host_paced_out (dead failed 2 times in a row after 1 pause")
                                      for f in failures)
    assert time.monotonic() - t0 >= 0.3 and sched.stats.paused == ["dead"] and sched.stats.given_up == ["dead"]
    assert sched.stats.requests == 4


def test_a_long_retry_after_fails_the_hosts_rows_now():
    tasks = [Task(i, "http://h/x", "h") for i in range(3)]
    sched = Scheduler(tasks, PacingConfig(concurrency=1, rate=1000, max_retry_after=1))
    first = sched.take()
    sched.done(first, THROTTLED, 3600)  # "come back in an hour"
    rest = [sched.take(), sched.take()]
    assert all(t.fail and t.fail.startswith("host_paced_out (h asked to wait 3600s") for t in rest)
    for t in rest:
        sched.done(t)
    assert sched.take() is None


def test_robots_fetch_first_then_the_rows():
    order = []

    def robots_state(task):
        if "h" not in fetched:
            if busy:
                return "wait"
            busy.add("h")
            task.robots_url = "http://h/robots.txt"
            return "fetch"
        return "refused: robots_disallowed (test)" if task.url.endswith("/no") else "ok"

    fetched, busy = set(), set()
    tasks = [Task(0, "http://h/a", "h"), Task(1, "http://h/no", "h"), Task(2, "http://h/b", "h")]
    sched = Scheduler(tasks, PacingConfig(concurrency=4, rate=1000), robots_state=robots_state)

    def work(task):
        if task.robots_url:
            time.sleep(0.05)
            fetched.add("h")
            order.append("robots")
            return ("again", OK, None)
        order.append(task.url)
        return OK

    results = []
    _run(sched, 3, work, refused=results, front=True)
    assert order[0] == "robots" and sorted(order[1:]) == ["http://h/a", "http://h/b"]
    assert results == ["robots_disallowed (test)"] and sched.stats.robots_fetches == 1
