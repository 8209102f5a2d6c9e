"""`jaxscale report` in headless Chromium: wide tables scroll inside their box, every image
decodes (naturalWidth > 0), no console or load errors (~15-30 s idle: one short NUTS report).

Chromium is driven with --dump-dom: a probe script injected ahead of the page records errors
and measures the laid-out page on `load`, and writes its findings into the DOM that Chromium
prints. scripts/test.sh installs Chromium when it is missing, so this test does not skip there.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_report import _planted_store  # noqa: E402

from jaxscale.cli.report import build_report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH = 700  # px: narrower than the report's runs table, so that table has to scroll

PROBE = """<script>
window.__probe = [];
window.addEventListener("error", e => __probe.push("error: " + (e.message ||
  ("failed to load " + (e.target && e.target.tagName)))), true);
for (const level of ["error", "warn"]) {
  const orig = console[level];
  console[level] = (...a) => { __probe.push("console." + level + ": " + a.join(" ")); orig(...a); };
}
window.addEventListener("load", () => {
  const boxed = t => t.parentElement && t.parentElement.classList.contains("scroll");
  const r = {
    errors: __probe,
    viewport: window.innerWidth,
    page_width: document.documentElement.scrollWidth,
    images: [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth})),
    tables: [...document.querySelectorAll("table")].map(t => ({
      boxed: boxed(t),
      overflow: boxed(t) ? getComputedStyle(t.parentElement).overflowX : null,
      width: t.getBoundingClientRect().width,
      box: boxed(t) ? t.parentElement.clientWidth : null,
      box_scroll: boxed(t) ? t.parentElement.scrollWidth : null,
    })),
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def probe(page: Path, tmp: Path, chromium: str) -> dict:
    """Load `page` (with the probe injected) in headless Chromium and return the findings."""
    text = page.read_text()
    head = re.search(r"<head[^>]*>", text, re.I)
    assert head, "no <head> in the page"
    probed = tmp / f"probed_{page.name}"
    probed.write_text(text[: head.end()] + PROBE + text[head.end() :])
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        f"--window-size={WIDTH},900",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout, re.S)
    assert m, f"no probe output; chromium exit {out.returncode}: {out.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def problems(r: dict) -> list[str]:
    """Everything the browser saw wrong: errors, broken images, page-wide or unboxed tables."""
    out = list(r["errors"])
    out += [f"image {i['alt']!r} did not decode" for i in r["images"] if i["w"] <= 0]
    if r["page_width"] > r["viewport"]:
        out.append(f"page scrolls sideways: {r['page_width']} px in a {r['viewport']} px window")
    for k, t in enumerate(r["tables"]):
        if not t["boxed"] or t["overflow"] not in ("auto", "scroll"):
            out.append(f"table {k} is not in a sideways-scrolling box")
    return out


@pytest.fixture
def chromium() -> str:
    """Chromium's path. Missing where apt-get could install it (root): a failure, since
    scripts/test.sh installs it there and a skip would hide a broken install step."""
    if CHROMIUM:
        return CHROMIUM
    if shutil.which("apt-get") and os.geteuid() == 0:
        pytest.fail("chromium is missing; scripts/test.sh installs it (apt-get install chromium)")
    pytest.skip("chromium not installed and apt-get cannot install it here (not root)")


def test_report_renders_in_a_browser(tmp_path, chromium):
    _planted_store(tmp_path / "res")
    # a short fit: this test checks the page, not the numbers (tests/test_report.py does)
    rep = build_report(tmp_path / "res", fit_chains=2, fit_draws=300, fit_warmup=300)
    r = probe(rep.path, tmp_path, chromium)
    assert problems(r) == []
    assert r["viewport"] == WIDTH
    assert len(r["images"]) >= 5 and all(i["w"] > 0 for i in r["images"])
    # at least one table is wider than the window and scrolls inside its box instead
    wide = [t for t in r["tables"] if t["box_scroll"] > t["box"]]
    assert wide, r["tables"]


def test_probe_catches_a_broken_page(tmp_path, chromium):
    """The checks can fail: a broken image, an unboxed wide table and a script error."""
    cells = "".join(f"<td>column_{i}_with_a_long_value</td>" for i in range(40))
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><head><title>bad</title></head><body>"
        '<img src="data:image/png;base64,AAAA" alt="broken">'
        f"<table><tr>{cells}</tr></table>"
        "<script>undefined_function()</script></body></html>"
    )
    found = problems(probe(page, tmp_path, chromium))
    assert any("'broken' did not decode" in p for p in found), found
    assert any("page scrolls sideways" in p for p in found), found
    assert any("not in a sideways-scrolling box" in p for p in found), found
    assert any("undefined_function" in p for p in found), found
