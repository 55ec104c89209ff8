"""Headless Chromium for the leaderboard tests, driven over the DevTools protocol through a pipe.

``--window-size`` cannot go below 500 px in headless Chromium, so a phone-sized viewport (390 px) needs
``Emulation.setDeviceMetricsOverride``; the protocol runs over ``--remote-debugging-pipe`` (file descriptors
3 and 4, NUL-separated JSON), which needs no extra package and opens no port.

:func:`open_page` loads a URL at a given viewport, evaluates JavaScript in it (``evaluate``) and takes
screenshots (``screenshot``: the full page, as PNG bytes).
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--remote-debugging-pipe"]


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium() -> str:
    browser = find_chromium()
    if browser is None:
        if os.environ.get("CCMB_NO_BROWSER") == "1":
            pytest.skip("CCMB_NO_BROWSER=1: static checks only")  # an explicit opt-out, never the default
        pytest.fail("chromium not found on PATH: install it (apt-get update && apt-get install -y chromium) "
                    "or set CCMB_NO_BROWSER=1 to accept static checks only")
    return browser


class Page:
    """One tab of a Chromium started for it; methods send protocol commands and wait for their answers."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int, timeout: float) -> None:
        self.proc, self.out, self.inp, self.timeout = proc, to_browser, from_browser, timeout
        self.buffer = b""
        self.next_id = 0
        self.session: Optional[str] = None
        self.events: list = []

    def _read_message(self, deadline: float) -> Dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self.inp], [], [], left)
            if ready:
                chunk = os.read(self.inp, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()})")
                self.buffer += chunk
        msg, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, params: Optional[Dict[str, Any]] = None, session: bool = True) -> Dict[str, Any]:
        self.next_id += 1
        msg: Dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> Dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for k, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(k)
            self.events.append(self._read_message(deadline))

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"JavaScript error: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Optional[Path] = None) -> bytes:
        """The full page (not just the viewport) as PNG bytes (written to ``path`` when given)."""
        size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1],
                                                             "scale": 1}})
        png = base64.b64decode(shot["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png


@contextmanager
def open_page(url: str, width: int, height: int = 900, profile: Optional[Path] = None,
              timeout: float = 60.0) -> Iterator[Page]:
    """``url`` loaded in a viewport of ``width`` x ``height`` CSS pixels (a phone below 600 px: mobile
    emulation, so the page's ``<meta name=viewport>`` applies)."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds() -> None:  # the browser reads commands on fd 3 and writes answers on fd 4
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
        os.dup2(high[0], 3)
        os.dup2(high[1], 4)

    args = [chromium(), *FLAGS, "--window-size=1280,900"]
    if profile is not None:
        args.append(f"--user-data-dir={profile}")
    proc = subprocess.Popen(args + ["about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=child_fds, pass_fds=(3, 4),
                            close_fds=True)
    os.close(to_browser_r)
    os.close(from_browser_w)
    page = Page(proc, to_browser_w, from_browser_r, timeout)
    try:
        target = page.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        page.session = page.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                        "mobile": width < 600})
        page.send("Page.enable")
        page.send("Page.navigate", {"url": url})
        page.wait_event("Page.loadEventFired")
        yield page
    finally:
        try:
            page.session = None
            page.send("Browser.close", session=False)
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_browser_w)
        os.close(from_browser_r)
