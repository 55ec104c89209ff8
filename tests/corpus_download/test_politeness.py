"""Issue 25 end to end: scripted sites on 127.0.0.x (robots.txt allow/disallow, 404, 500, Crawl-delay, opt-out
headers, 429 with and without Retry-After, a failing host, slow hosts) downloaded by ``ccmb download``."""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from click.testing import CliRunner

from ccmb import shards
from ccmb.cli import main
from ccmb.corpus import download as dl
from dl_helpers import write_jsonl, zero_record
from dl_sites import Site

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def sites():
    made = []

    def make(host, **kw):
        site = Site(host, **kw)
        made.append(site)
        return site

    yield make
    for s in made:
        s.close()


def _rows(out):
    return pa.concat_tables([shards.read_parquet(p) for p in sorted(out.glob("[0-9]*.parquet"))]).to_pylist()


def test_robots_optouts_pacing_and_backoff(tmp_path, sites):
    a = sites("127.0.0.2", robots="User-agent: *\nDisallow: /private/\nContent-Usage: /nai/ train-ai=n\n"
                                  "\nUser-agent: googlebot\nDisallow: /\n")
    b = sites("127.0.0.3", slow_s=0.4)  # no robots.txt (404): everything allowed
    c = sites("127.0.0.4", robots="User-agent: ccmb\nDisallow: /private/\nCrawl-delay: 0.5\n"
                                  "User-agent: *\nDisallow: /\n")
    d = sites("127.0.0.5", robots="server error", robots_status=500)
    e = sites("127.0.0.6", retry_after="2")
    f = sites("127.0.0.7")  # 429 without Retry-After: backoff
    g = sites("127.0.0.8")  # always 503: paused, then given up
    h = sites("127.0.0.9")  # fast host: the rate cap shows
    urls = ([f"{a.base}/img/{i}.jpg" for i in range(3)] + [f"{a.base}/private/{i}.jpg" for i in range(3)]
            + [f"{a.base}/nai/1.jpg", f"{a.base}/xrobots/1.jpg", f"{a.base}/usage/1.jpg", f"{a.base}/tdm/1.jpg",
               f"{a.base}/googlebot/1.jpg", f"{a.base}/to?u={c.base}/private/9.jpg", f"{a.base}/to?u={c.base}/img/9.jpg"]
            + [f"{b.base}/slow/{i}.jpg" for i in range(10)] + [f"{c.base}/img/{i}.jpg" for i in range(4)]
            + [f"{c.base}/private/{i}.jpg" for i in range(2)] + [f"{d.base}/img/{i}.jpg" for i in range(3)]
            + [f"{e.base}/throttle/1.jpg", f"{f.base}/throttle/1.jpg"] + [f"{g.base}/busy/{i}.jpg" for i in range(8)]
            + [f"{h.base}/img/{i}.jpg" for i in range(6)])
    src = write_jsonl(tmp_path / "zero.jsonl", [zero_record(i, u) for i, u in enumerate(urls)])
    out = tmp_path / "out"
    summary = dl.download([src], out, processes=1, threads=8, image_size=32, timeout=5, samples_per_shard=100,
                          allow_private=True, contact="mailto:crawl-test@example.org", host_concurrency=2,
                          host_rate=5, retries=1, backoff_base=0.2, host_fail_after=3, host_pause=0.5,
                          max_retry_after=10, host_groups=0)
    rows = {r["url"]: r for r in _rows(out)}
    assert summary.complete and len(rows) == len(urls)

    def outcome(url):
        r = rows[url]
        return r["status"] if r["status"] == "success" else r["error_message"]

    # robots.txt: disallowed paths are never requested, and fail with their reason
    assert a.hits("/private/") == [] and c.hits("/private/") == []
    for i in range(3):
        assert outcome(f"{a.base}/private/{i}.jpg").startswith("robots_disallowed (")
    assert "Disallow: /private/" in outcome(f"{a.base}/private/0.jpg")
    assert outcome(f"{a.base}/to?u={c.base}/private/9.jpg").startswith("robots_disallowed")  # after a redirect
    assert outcome(f"{a.base}/to?u={c.base}/img/9.jpg") == "success"
    assert outcome(f"{a.base}/nai/1.jpg").startswith("opted out by robots.txt Content-Usage (train-ai=n)")
    assert a.hits("/nai/") == []
    assert all(outcome(f"{a.base}/img/{i}.jpg") == "success" for i in range(3))
    # robots.txt read once per site; 500: the site is not crawled (only robots.txt was asked)
    for site in (a, b, c, d, e, f, g, h):
        assert site.hits("/robots.txt") == ["/robots.txt"], site.host
    assert d.hits("/img/") == [] and all(outcome(f"{d.base}/img/{i}.jpg").startswith("robots_unreachable")
                                         for i in range(3))
    assert all(outcome(f"{b.base}/slow/{i}.jpg") == "success" for i in range(10))  # robots.txt 404: allowed
    # opt-out headers (and a directive for another crawler, which is not one)
    assert outcome(f"{a.base}/xrobots/1.jpg") == "opted out by X-Robots-Tag (img2dataset: noai)"
    assert outcome(f"{a.base}/usage/1.jpg") == "opted out by Content-Usage (train-ai=n)"
    assert outcome(f"{a.base}/tdm/1.jpg") == "opted out by tdm-reservation (1)"
    assert outcome(f"{a.base}/googlebot/1.jpg") == "success"
    # pacing: at most 2 requests in flight per host (and 2 were used on the slow host)
    assert all(s.max_in_flight <= 2 for s in (a, b, c, d, e, f, g, h))
    assert b.max_in_flight == 2
    # at most 5 request starts per second per host; Crawl-delay 0.5 s makes the site serial and slower
    # (arrival times: a request that left late shortens the gap before the next, not the run's average)
    h_times = h.times("/")
    gaps = [y - x for x, y in zip(h_times, h_times[1:])]
    assert len(gaps) == 6 and h_times[-1] - h_times[0] >= 6 * 0.2 - 0.02 and min(gaps) >= 0.1, gaps
    c_times = c.times("/")
    c_gaps = [y - x for x, y in zip(c_times, c_times[1:])]
    assert c.max_in_flight == 1 and c_times[-1] - c_times[0] >= len(c_gaps) * 0.5 - 0.02 and min(c_gaps) >= 0.25
    # 429 with Retry-After: 2 is asked again no sooner than 2 s later, and then succeeds
    t429 = e.times("/throttle/1.jpg")
    assert len(t429) == 2 and t429[1] - t429[0] >= 2.0 and outcome(f"{e.base}/throttle/1.jpg") == "success"
    t429 = f.times("/throttle/1.jpg")  # without Retry-After: exponential backoff (0.2 s, jitter 0.5-1.5x)
    assert len(t429) == 2 and t429[1] - t429[0] >= 0.1 and outcome(f"{f.base}/throttle/1.jpg") == "success"
    # a host that keeps failing: 3 failures, a pause, 3 more, then its remaining rows are given up
    busy = Counter(outcome(f"{g.base}/busy/{i}.jpg").split(" (")[0] for i in range(8))
    assert len(g.hits("/busy/")) == 6 and busy["host_paced_out"] >= 2 and sum(busy.values()) == 8, busy
    busy_times = g.times("/busy/")
    assert max(y - x for x, y in zip(busy_times, busy_times[1:])) >= 0.5  # the pause
    # honest identity with the contact, on every request
    agents = {ag for s in (a, b, c, d, e, f, g, h) for ag in s.agents()}
    assert agents == {"ccmb/0.1.0 (+mailto:crawl-test@example.org; compatible; img2dataset)"}
    # refusals by reason and the pacing, in the summary, the shard's _stats.json and summary.json
    ref = summary.refusals
    assert ref["robots"] == {"robots_disallowed": 6, "robots_unreachable": 3}
    assert ref["opt_out"] == {"opted out by X-Robots-Tag": 1, "opted out by Content-Usage": 1,
                              "opted out by tdm-reservation": 1, "opted out by robots.txt Content-Usage": 1}
    assert sum(ref["paced_out"].values()) == busy["host_paced_out"]
    assert summary.pacing["throttled"] >= 2 + 6 - 1 and summary.pacing["crawl_delays"] == {"127.0.0.4": 0.5}
    assert summary.pacing["given_up_hosts"] == ["127.0.0.8"] and summary.pacing["paused_hosts"] == ["127.0.0.8"]
    assert summary.pacing["max_in_flight_per_host"] == 2 and summary.pacing["robots_fetches"] == 8
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["refusals"]["robots"]["robots_disallowed"] == 6 and stats["pacing"]["retry_after_max_s"] == 2
    saved = json.loads((out / "_ccmb" / "summary.json").read_text())
    assert saved["policy"]["contact"] == "mailto:crawl-test@example.org" and saved["policy"]["robots_txt"] is True
    assert saved["refusals"] == summary.refusals
    report = summary.report()
    assert "refusals: robots 9, opt_out 4" in report and "crawl-delay: 127.0.0.4 0.5s" in report
    # ccmb stats shows the same
    res = CliRunner().invoke(main, ["stats", str(out)])
    assert res.exit_code == 0, res.output
    assert "refusals: robots 9, opt_out 4, paced_out" in res.output and "robots_disallowed" in res.output
    assert "given up: 127.0.0.8" in res.output and "ccmb/0.1.0 (+mailto:crawl-test@example.org" in res.output
    stats = json.loads(CliRunner().invoke(main, ["stats", str(out), "--json"]).output)
    assert stats["download"]["refusals"]["opt_out"] == 4 and stats["download"]["pacing"]["requests"] >= 40


def test_host_groups_keep_a_host_in_one_worker(tmp_path, sites):
    """Two processes, host cap 1: grouped by host, no host ever sees two requests at once; without grouping
    (the limits are per worker process) the same input does (this shows the check can fail). 64 groups: the two
    hosts fall in two groups (by default, one group per process)."""
    x, y = sites("127.0.0.10", slow_s=0.25), sites("127.0.0.11", slow_s=0.25)
    urls = [f"{s.base}/slow/{i}.jpg" for i in range(16) for s in (x, y)]
    src = write_jsonl(tmp_path / "zero.jsonl", [zero_record(i, u) for i, u in enumerate(urls)])
    opts = dict(processes=2, threads=4, image_size=32, timeout=5, retries=0, samples_per_shard=8, allow_private=True,
                host_concurrency=1, host_rate=100)
    summary = dl.download([src], tmp_path / "grouped", host_groups=64, **opts)
    assert summary.successes == 32 and x.max_in_flight == 1 and y.max_in_flight == 1
    state = json.loads((tmp_path / "grouped" / "_ccmb" / "state.json").read_text())
    assert len(set(state["lanes"])) == 2 and summary.expected_shards == 4  # one group per host, 2 shards each
    by_key = {r["key"]: r["url"] for r in _rows(tmp_path / "grouped")}
    for shard in ("00000", "00001", "00002", "00003"):  # every shard holds one host's rows
        assert len({u.split("/")[2] for k, u in by_key.items() if k.startswith(shard)}) == 1
    x.max_in_flight = y.max_in_flight = 0
    summary = dl.download([src], tmp_path / "ungrouped", host_groups=0, **{**opts, "samples_per_shard": 16})
    assert summary.successes == 32 and max(x.max_in_flight, y.max_in_flight) == 2
