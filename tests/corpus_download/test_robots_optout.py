"""robots.txt (RFC 9309) parsing and matching, its fetch outcomes, and the opt-out headers."""
from __future__ import annotations

import email.message
import time

import pytest

from ccmb.corpus.download import http_fetch, optout, robots
from ccmb.corpus.download.robots import RobotsCache, parse


def test_groups_for_ccmb_then_img2dataset_then_star():
    text = ("User-agent: *\nDisallow: /all-bots/\n\n"
            "User-agent: ExampleBot\nUser-agent: img2dataset\nDisallow: /no-scrapers/\n\n"
            "User-agent: other\nDisallow: /\n")
    rules = parse(text)
    assert rules.groups == "img2dataset"
    assert rules.check("/no-scrapers/a.jpg") == "Disallow: /no-scrapers/"
    assert rules.check("/all-bots/a.jpg") is None  # a group for us replaces the * group
    assert parse("User-agent: *\nDisallow: /all-bots/\n").check("/all-bots/x") == "Disallow: /all-bots/"
    # several groups naming us are combined; names match case-insensitively, versions ignored
    both = parse("User-agent: CCMB/0.1\nDisallow: /a/\n\nUser-agent: img2dataset\nDisallow: /b/\n")
    assert both.groups == "ccmb,img2dataset" and both.check("/a/1") and both.check("/b/1")
    assert parse("").check("/anything") is None and parse("Disallow: /\n").check("/x") is None  # no group


def test_longest_match_wins_and_allow_wins_ties():
    rules = parse("User-agent: *\nDisallow: /p\nAllow: /p/ok\nDisallow: /p/ok/no\nAllow: /t\nDisallow: /t\n")
    assert rules.check("/p/x") == "Disallow: /p"
    assert rules.check("/p/ok/x") is None
    assert rules.check("/p/ok/no/x") == "Disallow: /p/ok/no"
    assert rules.check("/t/x") is None  # equal length: allow
    assert rules.check("/robots.txt") is None  # always allowed


def test_wildcards_end_anchor_and_percent_encoding():
    rules = parse("User-agent: *\nDisallow: /*.gif$\nDisallow: /a*b/\nDisallow: /%E5%9B%BE\nDisallow: /x%2fy\n"
                  "Disallow: /q?id=\nDisallow: /%7Euser\n")
    assert rules.check("/img/a.gif") and not rules.check("/img/a.gif?x=1") and not rules.check("/a.gifx")
    assert rules.check("/a123b/c") and not rules.check("/ab")
    assert rules.check("/图片/1.jpg") and rules.check("/%e5%9b%be/2.jpg")  # UTF-8 percent-encoded, any case
    assert rules.check("/x%2Fy") and not rules.check("/x/y")  # an encoded slash is not a slash
    assert rules.check("/q?id=3") and not rules.check("/q")
    assert rules.check("/~user/a") and rules.check("/%7euser/b")  # unreserved characters decoded
    assert robots.robots_path("http://h/a/b.jpg?x=1#f") == "/a/b.jpg?x=1"


def test_crawl_delay_content_usage_comments_and_typos():
    rules = parse("# comment\nuser-agent: *  # trailing\nDISALLOW: /private/ # why\ncrawl-delay: 2.5\n"
                  "Content-Usage: train-ai=n, search=y\nContent-Usage: /open/ train-ai=y\nuseragent: x\n"
                  "disalow: /typo/\n")
    assert rules.crawl_delay == 2.5 and rules.check("/private/1") == "Disallow: /private/"
    assert rules.content_usage("/img/1.jpg") == "train-ai=n, search=y"
    assert rules.content_usage("/open/1.jpg") == "train-ai=y"
    assert parse("User-agent: *\nCrawl-delay: 99999\n").crawl_delay == robots.MAX_CRAWL_DELAY
    assert parse("User-agent: *\nCrawl-delay: soon\n").crawl_delay is None
    assert parse("User-agent: *\ndisalow: /typo/\n").check("/typo/1")


def _cache_with(outcome):
    cache = RobotsCache(error_ttl=60)

    def get(url):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return cache, cache.fetch("http://h.example/robots.txt", get)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_4xx_means_no_restriction(status):
    _, entry = _cache_with(http_fetch.HTTPStatusError(status, "x"))
    assert entry.refusal("/anything") is None


@pytest.mark.parametrize("error", [http_fetch.HTTPStatusError(500, "boom"), http_fetch.HTTPStatusError(503, "busy"),
                                   http_fetch.HTTPStatusError(429, "slow"), ConnectionRefusedError(111, "refused"),
                                   http_fetch.FetchError("deadline exceeded (10s per request)")])
def test_5xx_429_and_unreachable_disallow_everything_for_a_while(error):
    cache, entry = _cache_with(error)
    reason = entry.refusal("/img/1.jpg")
    assert reason.startswith("robots_unreachable (http://h.example/robots.txt: ") and "not crawled" in reason
    assert cache.entry("http://h.example/robots.txt") is entry
    assert cache.entry("http://h.example/robots.txt", now=entry.expires + 1) is None  # fetched again later
    assert 55 <= entry.expires - time.monotonic() <= 60  # --robots-retry


def test_too_many_redirects_is_unavailable_and_a_parsed_file_is_kept_a_day():
    _, entry = _cache_with(http_fetch.FetchError("redirect loop (more than 5 redirects)"))
    assert entry.refusal("/x") is None
    cache, entry = _cache_with(b"\xef\xbb\xbfUser-agent: *\nDisallow: /\n")  # a BOM is skipped
    assert entry.refusal("/x").startswith("robots_disallowed (http://h.example/robots.txt: Disallow: /)")
    assert entry.expires - time.monotonic() > 23.9 * 3600  # kept 24 h
    assert RobotsCache.url_of("HTTPS://Img.Example.COM:443/a/b.jpg?x") == "https://img.example.com/robots.txt"
    assert RobotsCache.url_of("http://[::1]:8080/a") == "http://[::1]:8080/robots.txt"


def test_robots_fetch_keeps_the_first_500_kib(image_server):
    """A robots.txt larger than the cap is cut, not refused (RFC 9309: parse at least 500 KiB)."""
    image_server.huge_bytes = 2 << 20
    body = http_fetch.fetch(f"{image_server.base}/huge/1", http_fetch.FetchLimits(allow_private=True, timeout=5,
                                                                                  max_bytes=robots.MAX_ROBOTS_BYTES),
                            truncate_at=robots.MAX_ROBOTS_BYTES)
    image_server.huge_bytes = 8 << 20
    assert len(body) == robots.MAX_ROBOTS_BYTES


def _headers(**values):
    msg = email.message.Message()
    for k, v in values.items():
        for one in v if isinstance(v, list) else [v]:
            msg[k.replace("_", "-")] = one
    return msg


@pytest.mark.parametrize("value,refused", [
    ("noai", "noai"), ("noimageai", "noimageai"), ("noindex, nofollow", "noindex"), ("none", "none"),
    ("img2dataset: noai", "img2dataset: noai"), ("ccmb: noimageindex", "ccmb: noimageindex"),
    ("googlebot: noindex", None), ("nofollow", None), ("unavailable_after: 25 Jun 2010 15:00:00 PST", None),
    ("googlebot: nofollow, ccmb: noai", "ccmb: noai"), (["googlebot: noindex", "noai"], "noai"),
])
def test_x_robots_tag(value, refused):
    reason = optout.check(_headers(X_Robots_Tag=value))
    assert reason == (f"opted out by X-Robots-Tag ({refused})" if refused else None)


@pytest.mark.parametrize("value,refused", [
    ("train-ai=n", True), ("search=y, train-ai=n", True), ("train-ai=y", False), ("bots=n", True),
    ("bots=n, train-ai=y", False), ("train-genai=n", False), ("train-ai=n;ext=1", True), ('train-ai="n"', True),
    ("search=n", False), ("", False), (["train-ai=y", "train-ai=n"], True),
])
def test_aipref_content_usage(value, refused):
    reason = optout.check(_headers(Content_Usage=value))
    assert (reason is not None) == refused and (not refused or reason.startswith("opted out by Content-Usage"))


def test_tdm_reservation():
    assert optout.check(_headers(tdm_reservation="1")) == "opted out by tdm-reservation (1)"
    assert optout.check(_headers(tdm_reservation="0")) is None
    assert optout.robots_usage_refused("train-ai=n") == "opted out by robots.txt Content-Usage (train-ai=n)"
    assert optout.robots_usage_refused(None) is None
