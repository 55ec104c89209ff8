"""Self-contained HTML leaderboard: the rows as embedded JSON, a sortable table and per-dataset SVG bar
charts built by inline JavaScript (no CDN, no network)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

TEMPLATE = Path(__file__).with_name("templates") / "leaderboard.html"


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v


def render_html(rows: Sequence[Dict[str, Any]], columns: List[str], main_metric: Dict[str, str],
                title: str = "CCMB leaderboard") -> str:
    payload = {"rows": [{k: _clean(v) for k, v in r.items()} for r in rows], "columns": columns,
               "main_metric": main_metric}
    data = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")
    page = TEMPLATE.read_text(encoding="utf-8")
    return page.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)
