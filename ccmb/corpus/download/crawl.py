"""The requests of one shard: robots.txt, opt-outs, blocklist, pacing, retries (run by the download threads).

:class:`Crawler` turns the shard's rows into tasks of a :class:`ccmb.corpus.download.pacing.Scheduler` and
runs ``threads`` download threads over them. For each row, in order, without a request when refused early:

1. the blocklist (URL, its domain, the page's URL and domain) and the URL scheme;
2. the host given up (``host_paced_out``) or asking to wait too long;
3. robots.txt of the URL's authority (fetched once by one thread, while the host's other rows wait; cached
   per worker process): ``robots_disallowed`` / ``robots_unreachable``, its ``Content-Usage`` lines;
4. the request (:func:`ccmb.corpus.download.http_fetch.fetch`), within the host's pacing slot; a redirect
   inside the site is checked again (robots.txt, blocklist) before it is followed, a redirect to another
   site is queued under that host (its robots.txt and pacing apply);
5. the response's opt-out headers (:mod:`ccmb.corpus.download.optout`) before the body is read;
6. 429/503 (``Retry-After``) and 5xx/timeouts/connection errors: tried again (``retries``) after the host's
   wait; anything else is the row's outcome;
7. the blocklist's hashes of the downloaded bytes.

:meth:`Crawler.run` yields ``(row index, body or None, error or None)`` as rows finish; at most
``2 * threads`` bodies wait for the caller at a time (memory bound, as img2dataset).
"""
from __future__ import annotations

import dataclasses
import http.client
import queue
import ssl
import threading
from typing import Dict, Iterator, List, Optional, Set, Tuple
from urllib.parse import urlsplit

from ...blocklist import Blocklist
from . import http_fetch, optout
from .pacing import FAILED, OK, THROTTLED, Scheduler, Task
from .policy import CrawlPolicy
from .robots import MAX_ROBOTS_BYTES, MAX_ROBOTS_REDIRECTS, RobotsCache, robots_path
from .safetext import escape_controls

REFUSED_BEFORE_DOWNLOAD = "refused before download"
#: Redirects a row may follow across sites (each hop queued under its host).
MAX_CROSS_REDIRECTS = http_fetch.MAX_REDIRECTS

_ROBOTS: Optional[RobotsCache] = None
_BLOCKLISTS: Dict[Tuple[str, ...], Blocklist] = {}
_LOCK = threading.Lock()


def robots_cache(error_ttl: float) -> RobotsCache:
    """This worker process's robots.txt cache."""
    global _ROBOTS
    with _LOCK:
        if _ROBOTS is None:
            _ROBOTS = RobotsCache(error_ttl=error_ttl)
        _ROBOTS.error_ttl = error_ttl
        return _ROBOTS


def load_blocklist(policy: CrawlPolicy) -> Optional[Blocklist]:
    """The policy's blocklist, read once per worker process (checked against the driver's digest)."""
    if not policy.blocklist_files:
        return None
    with _LOCK:
        bl = _BLOCKLISTS.get(policy.blocklist_files)
        if bl is None:
            bl = _BLOCKLISTS[policy.blocklist_files] = Blocklist.load(list(policy.blocklist_files))
    if policy.blocklist_digest and bl.digest != policy.blocklist_digest:
        raise RuntimeError(f"the blocklist {', '.join(policy.blocklist_files)} changed during the download")
    return bl


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


class Crawler:
    """Downloads the rows of one shard under a :class:`CrawlPolicy` (module docstring)."""

    def __init__(self, policy: CrawlPolicy, threads: int) -> None:
        self.policy = policy
        self.threads = threads
        self.robots = robots_cache(policy.robots_error_ttl)
        self.blocklist = load_blocklist(policy)
        self.headers = {"User-Agent": policy.user_agent}
        self._robots_busy: Set[str] = set()
        self.scheduler: Optional[Scheduler] = None

    # -- checks before a request (called under the scheduler's lock)
    def _precheck(self, task: Task) -> Optional[str]:
        if self.blocklist is not None:
            reason = self.blocklist.match_url(task.url, "url")
            if reason is None and task.redirects == 0:
                reason = self.blocklist.match_url(self._page_urls.get(task.index), "page_url")
            return reason
        return None

    def _robots_state(self, task: Task) -> str:
        if not self.policy.respect_robots:
            return "ok"
        robots_url = RobotsCache.url_of(task.url)
        entry = self.robots.entry(robots_url)
        if entry is None:
            if robots_url in self._robots_busy:
                return "wait"
            self._robots_busy.add(robots_url)
            task.robots_url = robots_url
            return "fetch"
        reason = self._robots_refusal(entry, task.url)
        return f"refused: {reason}" if reason else "ok"

    @staticmethod
    def _robots_refusal(entry, url: str) -> Optional[str]:
        path = robots_path(url)
        reason = entry.refusal(path)
        if reason is None and entry.rules is not None:
            reason = optout.robots_usage_refused(entry.rules.content_usage(path))
        return reason

    def _check_hop(self, url: str) -> Optional[str]:
        """A redirect inside the site: robots.txt (same file) and the blocklist, before it is followed."""
        if self.blocklist is not None:
            reason = self.blocklist.match_url(url, "url")
            if reason:
                return reason
        if self.policy.respect_robots:
            entry = self.robots.entry(RobotsCache.url_of(url))
            if entry is not None:
                return self._robots_refusal(entry, url)
        return None

    def _check_headers(self, headers) -> Optional[str]:
        return optout.check(headers, self.policy.tokens)

    # -- one task (a download thread)
    def _handle(self, task: Task) -> Optional[Tuple[int, Optional[bytes], Optional[str]]]:
        sched = self.scheduler
        assert sched is not None
        if task.fail is not None:
            sched.done(task)
            return task.index, None, task.fail
        if task.robots_url:
            self._fetch_robots(task)
            return None
        try:
            body = http_fetch.fetch(task.url, self.policy.limits, self.headers, self._check_headers,
                                    check_hop=self._check_hop, same_authority=True)
        except http_fetch.CrossAuthorityRedirect as hop:
            task.redirects += 1
            if task.redirects > MAX_CROSS_REDIRECTS:
                sched.done(task, OK)
                return task.index, None, f"{http_fetch.REDIRECT_LOOP} (more than {MAX_CROSS_REDIRECTS} redirects)"
            task.url, task.host = hop.url, host_of(hop.url)
            sched.again(task, OK)
            return None
        except Exception as exc:  # every failure is the row's reason (or a retry)
            outcome, retry_after, message = classify(exc)
            task.tries += 1
            cap = self.policy.pacing.max_retry_after
            if outcome != OK and task.tries <= self.policy.pacing.retries and (retry_after or 0) <= cap:
                sched.stats.retries += 1
                sched.again(task, outcome, retry_after)
                return None
            sched.done(task, outcome, retry_after)
            if retry_after is not None:
                message += f" (Retry-After {retry_after:g}s)"
            return task.index, None, message
        sched.done(task, OK)
        if self.blocklist is not None:
            reason = self.blocklist.match_bytes(body, "downloaded image")
            if reason:
                return task.index, None, reason
        return task.index, body, None

    def _fetch_robots(self, task: Task) -> None:
        robots_url = task.robots_url
        assert robots_url is not None
        sched = self.scheduler
        outcome = OK
        limits = dataclasses.replace(self.policy.limits, max_bytes=MAX_ROBOTS_BYTES)  # not --max-bytes: cut, kept

        def get(url: str) -> bytes:
            nonlocal outcome
            try:
                return http_fetch.fetch(url, limits, self.headers, max_redirects=MAX_ROBOTS_REDIRECTS,
                                        truncate_at=MAX_ROBOTS_BYTES)
            except Exception as exc:
                outcome = classify(exc)[0]
                raise

        try:
            entry = self.robots.fetch(robots_url, get)
        finally:
            self._robots_busy.discard(robots_url)
        sched.note_crawl_delay(task.host, entry.rules.crawl_delay if entry.rules is not None else None)
        sched.again(task, outcome, front=True)

    # -- the shard
    def run(self, rows: List[Tuple[int, str, Optional[str]]]) -> Iterator[Tuple[int, Optional[bytes], Optional[str]]]:
        """Download ``rows`` (index, URL, page URL); yields (index, body, error) as they finish."""
        self._page_urls = {i: page for i, _, page in rows if page}
        tasks = []
        for index, url, _ in rows:
            url = (url or "").strip()
            if not url:
                tasks.append(Task(index, url, "", fail=REFUSED_BEFORE_DOWNLOAD))
            elif url[:7].lower() == "file://":
                tasks.append(Task(index, url, ""))
            else:
                tasks.append(Task(index, url, host_of(url)))
        sched = self.scheduler = Scheduler(tasks, self.policy.pacing, robots_state=self._robots_state,
                                           precheck=self._precheck)
        results: "queue.Queue" = queue.Queue()
        permits = threading.Semaphore(2 * self.threads)
        errors: List[BaseException] = []

        def worker() -> None:
            try:
                while True:
                    permits.acquire()
                    task = sched.take()
                    if task is None:
                        permits.release()
                        return
                    if task.fail is None and not task.host:
                        out = self._local(task)
                    else:
                        out = self._handle(task)
                    if out is None:
                        permits.release()
                    else:
                        results.put(out)
            except BaseException as exc:  # a bug: stop the shard, do not hang it
                errors.append(exc)
                results.put(None)

        threads = [threading.Thread(target=worker, name=f"ccmb-download-{i}", daemon=True)
                   for i in range(max(1, min(self.threads, len(tasks))))]
        for t in threads:
            t.start()
        try:
            for _ in range(len(tasks)):
                item = results.get()
                if item is None:
                    raise errors[0]
                yield item
                permits.release()
        finally:
            sched.close()  # an early end (disk full, an error): the threads stop after their current request
            for _ in threads:
                permits.release()
        for t in threads:
            t.join()

    def _local(self, task: Task) -> Tuple[int, Optional[bytes], Optional[str]]:
        """A ``file://`` row (only there when ``--allow-file-urls`` let it through): read, size-capped."""
        from urllib.request import url2pathname

        assert self.scheduler is not None
        self.scheduler.done(task)
        try:
            with open(url2pathname(urlsplit(task.url).path), "rb") as fh:
                data = fh.read(self.policy.max_bytes + 1)
        except OSError as exc:
            return task.index, None, escape_controls(exc)
        if len(data) > self.policy.max_bytes:
            return task.index, None, f"{http_fetch.TOO_LARGE} (more than {self.policy.max_bytes} bytes)"
        return task.index, data, None


def classify(exc: BaseException) -> Tuple[str, Optional[float], str]:
    """(host outcome, Retry-After seconds or None, the row's message) of a failed request."""
    message = escape_controls(str(exc) or type(exc).__name__)
    if isinstance(exc, http_fetch.HTTPStatusError):
        if exc.status in (429, 503):
            return THROTTLED, exc.retry_after, message
        return (FAILED if exc.status >= 500 else OK), None, message
    if isinstance(exc, http_fetch.FetchError):
        failed = message.startswith((http_fetch.DEADLINE, http_fetch.TRUNCATED))
        return (FAILED if failed else OK), None, message
    if isinstance(exc, ssl.SSLCertVerificationError):
        return OK, None, message  # the host answered; its certificate is wrong: trying again cannot help
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return FAILED, None, message
    return OK, None, message
