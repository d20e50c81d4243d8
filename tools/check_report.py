"""Open a run's report.html in a real headless browser (Chromium from Debian's packages, driven by Selenium),
check it, and screenshot it.

    python tools/check_report.py runs/demo/report.html [--screenshot docs/report_screenshot.png]

Fails (exit 1, one line per problem) when an image is broken (not loaded or zero-sized), a figure has no legend or
labels that overlap (report_figures.layout_problems, carried on the image), an in-page link has no target, a section
is empty (a heading with nothing under it), the verdict box is missing or hidden, or a table is missing; exit 2 when the browser
is not installed (`apt-get install chromium chromium-driver`, `pip install selenium`). `make check-report` runs it on
the demo run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

CHECKS_JS = """
const problems = [];
for (const img of document.images) {
  if (!img.complete || img.naturalWidth === 0 || img.naturalHeight === 0)
    problems.push(`broken image: ${img.alt || img.src.slice(0, 60)}`);
}
for (const img of document.querySelectorAll('img[data-legend]')) {
  if (img.dataset.legend !== '1') problems.push(`figure without a legend: ${img.alt}`);
  if (img.dataset.overlaps) problems.push(`overlapping labels in ${img.alt}: ${img.dataset.overlaps}`);
}
for (const img of document.images) {
  if (!img.hasAttribute('data-legend')) problems.push(`figure without its layout check (re-run introspect report): ${img.alt}`);
}
for (const a of document.querySelectorAll('a[href^="#"]')) {
  if (!document.getElementById(a.getAttribute('href').slice(1))) problems.push(`link to a missing anchor: ${a.getAttribute('href')}`);
}
for (const sec of document.querySelectorAll('section')) {
  const h = sec.querySelector('h2');
  const rest = Array.from(sec.children).filter(c => c !== h);
  const text = rest.map(c => c.innerText.trim()).join('');
  const media = sec.querySelectorAll('img, table tr td').length;
  if (!text && !media) problems.push(`empty section: ${h ? h.innerText : '(no heading)'}`);
}
const box = document.querySelector('.verdict');
if (!box) problems.push('no verdict box');
else if (box.offsetHeight === 0 || !box.innerText.includes('test')) problems.push('verdict box hidden or empty');
else if (box.getBoundingClientRect().top > window.innerHeight) problems.push('verdict box not on the first screen');
if (document.querySelectorAll('table').length === 0) problems.push('no HTML table');
return {problems, height: document.body.scrollHeight, tables: document.querySelectorAll('table').length,
        images: document.images.length, sections: document.querySelectorAll('section').length};
"""


def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not (chromium and driver):
        raise SystemExit("check_report needs Chromium, its driver and Selenium: `apt-get install chromium "
                         "chromium-driver` and `pip install selenium`")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def check(report: Path, screenshot: Path | None = None) -> dict:
    """The problems Chromium finds on the page (empty list: fine), and the page's counts."""
    if not report.is_file():
        raise SystemExit(f"{report} does not exist: run `introspect report RUN` first")
    drv = browser()
    try:
        drv.get(report.resolve().as_uri())
        found = drv.execute_script(CHECKS_JS)
        if screenshot is not None:
            drv.set_window_size(1200, min(int(found["height"]) + 40, 16000))
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(str(screenshot))
    finally:
        drv.quit()
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--screenshot", type=Path, default=None, help="write a full-page PNG here")
    args = ap.parse_args()
    try:
        found = check(args.report, args.screenshot)
    except SystemExit as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    print(f"[check_report] {args.report}: {found['sections']} sections, {found['tables']} tables, {found['images']} images"
          + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
    for p in found["problems"]:
        print(f"[check_report] problem: {p}")
    sys.exit(1 if found["problems"] else 0)


if __name__ == "__main__":
    main()
