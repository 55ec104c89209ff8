"""How a download behaves on the web: identity, robots.txt, opt-outs, pacing, limits, blocklist (picklable).

The user agent names ccmb, its version and the operator's contact (``--contact``), plus ``img2dataset``
(the engine it runs on, a name sites already write rules for); it never pretends to be a browser:
``ccmb/0.1.0 (+mailto:data-team@example.org; compatible; img2dataset)``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ... import __version__
from .http_fetch import DEFAULT_MAX_BYTES, FetchLimits
from .pacing import PacingConfig
from .robots import ERROR_TTL, TOKENS

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d+)?(/[!-~]*)?$")
MAX_CONTACT = 200


def check_contact(contact: Optional[str]) -> Optional[str]:
    """``contact`` as it goes into the user agent (``mailto:`` added to an address), or None; raises
    ValueError for anything that is not an http(s) URL or an e-mail address (no spaces, quotes, controls)."""
    if contact is None or not contact.strip():
        return None
    contact = contact.strip()
    if len(contact) > MAX_CONTACT or not contact.isascii() or any(c in contact for c in ' "\\()<>;'):
        raise ValueError(f"--contact must be an http(s) URL or an e-mail address, got {contact[:80]!r}")
    if contact.lower().startswith("mailto:") and _EMAIL.match(contact[7:]):
        return contact
    if _EMAIL.match(contact):
        return f"mailto:{contact}"
    if _URL.match(contact):
        return contact
    raise ValueError(f"--contact must be an http(s) URL or an e-mail address, got {contact[:80]!r}")


def user_agent(contact: Optional[str]) -> str:
    """ccmb's user agent: product, version, contact (or a note that none was given), the engine."""
    who = f"+{contact}" if contact else "no contact given"
    return f"ccmb/{__version__} ({who}; compatible; img2dataset)"


@dataclass(frozen=True)
class CrawlPolicy:
    """Everything the download threads of a worker need to know about politeness and safety."""

    contact: Optional[str] = None
    respect_robots: bool = True
    robots_error_ttl: float = ERROR_TTL
    tokens: Tuple[str, ...] = TOKENS
    pacing: PacingConfig = field(default_factory=PacingConfig)
    timeout: float = 10.0
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_private: bool = False
    blocklist_files: Tuple[str, ...] = ()
    blocklist_digest: str = ""

    @property
    def user_agent(self) -> str:
        return user_agent(self.contact)

    @property
    def limits(self) -> FetchLimits:
        return FetchLimits(timeout=self.timeout, max_bytes=self.max_bytes, allow_private=self.allow_private)

    def describe(self) -> dict:
        """The policy as recorded in the run's state and summary (``_ccmb/state.json``, ``summary.json``)."""
        p = self.pacing
        return {"user_agent": self.user_agent, "contact": self.contact, "robots_txt": self.respect_robots,
                "robots_unreachable_retry_s": self.robots_error_ttl, "robots_tokens": list(self.tokens),
                "opt_outs": ["X-Robots-Tag", "Content-Usage (AIPREF)", "tdm-reservation (TDMRep)"],
                "private_addresses": "allowed" if self.allow_private else "refused",
                "pacing": {"host_concurrency": p.concurrency, "host_rate_per_s": p.rate, "retries": p.retries,
                           "backoff_base_s": p.backoff_base, "backoff_max_s": p.backoff_max,
                           "max_retry_after_s": p.max_retry_after, "host_fail_after": p.fail_after,
                           "host_pause_s": p.pause, "host_max_pauses": p.max_pauses},
                "timeout_s": self.timeout, "max_bytes": self.max_bytes,
                "blocklist": {"files": list(self.blocklist_files), "sha256": self.blocklist_digest}
                if self.blocklist_files else None}
