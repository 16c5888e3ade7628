"""Open the built docs in headless Chromium and check what a reader sees; screenshots go to docs/_build/checks/.

    .venv/bin/python -m sphinx -W -b html docs docs/_build/html && .venv/bin/python docs/check_in_browser.py

Needs a Chromium binary (Debian: ``apt-get install chromium``; or set CHROMIUM=/path/to/it). Checks, on the page
as the browser rendered it (after its scripts ran, from ``--dump-dom``):

- the math of ``scale_by_adam``'s page is typeset by the bundled MathJax (no raw TeX delimiters remain), offline;
- the search page finds ``scale_by_adam`` and links to its entry;
- the gallery's optimizer comparison shows its plots;
- every ``<img>`` of the guides and the gallery points at a file that is there and is an image.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

HTML = pathlib.Path(__file__).parent / "_build" / "html"
CHECKS = HTML.parent / "checks"


def chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    sys.exit("no Chromium found: apt-get install chromium, or set CHROMIUM=/path/to/chromium")


def browse(url: str, *flags: str) -> str:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", *flags, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


def rendered(page: str, query: str = "") -> str:
    url = (HTML / page).resolve().as_uri() + query
    CHECKS.mkdir(parents=True, exist_ok=True)
    shot = CHECKS / (page.replace("/", "_").removesuffix(".html") + ".png")
    browse(url, "--window-size=1200,1600", f"--screenshot={shot}")
    return browse(url, "--dump-dom")


def check_math() -> None:
    dom = rendered("api/transforms.adaptive.html")
    assert 'id="jaxopt_zoo.scale_by_adam"' in dom, "scale_by_adam's entry is missing"
    typeset, raw = dom.count("<mjx-container"), len(re.findall(r"\\\(|\\\[", dom))
    assert typeset > 20 and raw == 0, f"MathJax typeset {typeset} formulas and left {raw} raw TeX delimiters"
    assert '_static/mathjax/tex-chtml.js' in dom, "the page does not load the bundled MathJax"
    print(f"math: {typeset} formulas typeset on transforms.adaptive.html, no raw TeX left")


def check_search() -> None:
    dom = rendered("search.html", "?q=scale_by_adam")
    hits = re.findall(r'href="([^"]*#jaxopt_zoo\.scale_by_adam)"', dom)
    assert hits, "the search for scale_by_adam found no link to its entry"
    print(f"search: scale_by_adam -> {hits[0]}")


def check_gallery_page() -> None:
    dom = rendered("gallery/compare_optimizers.html")
    images = re.findall(r'<img[^>]+src="([^"]+)"', dom)
    if "This build ran no examples" in dom:
        print("gallery: built with -D gallery=off, no images to show")
        return
    assert any(src.endswith("trajectories.png") for src in images), f"no trajectories plot on the page: {images}"
    print(f"gallery: compare_optimizers.html shows {len(images)} images ({', '.join(images)})")


def check_images() -> None:
    pages = sorted((HTML / "guides").glob("*.html")) + sorted((HTML / "gallery").glob("*.html"))
    count = 0
    for page in pages:
        for src in re.findall(r'<img[^>]+src="([^"]+)"', page.read_text()):
            image = (page.parent / src).resolve()
            assert image.is_file() and image.read_bytes()[:4] in (b"\x89PNG", b"<svg", b"<?xm"), f"{page.name}: {src}"
            count += 1
    print(f"images: {count} on {len(pages)} guide and gallery pages, all present")


if __name__ == "__main__":
    if not (HTML / "index.html").exists():
        sys.exit(f"build the docs first: .venv/bin/python -m sphinx -W -b html docs {HTML}")
    check_math()
    check_search()
    check_gallery_page()
    check_images()
    print(f"screenshots in {CHECKS}")
