"""Write the XOR explained page (xor.py --explain --html) and a screenshot of it in headless Chromium.

    python examples/explain_shot.py docs/xor-explain.png

Chromium comes from the system's packages (Debian: apt-get install chromium). The page reports
JavaScript errors in the DOM (body[data-js-errors]) and marks itself ready (body[data-ready]) once
drawn, so a DOM dump shows whether the script ran cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-extensions", "--mute-audio"]


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) program on PATH, or None."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _run(args: list[str], profile: str) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found on PATH (Debian: apt-get install chromium)")
    return subprocess.run([chromium, *HEADLESS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, check=True)


def dump_dom(page: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran, e.g. fragment "snapshot=-1" opens at the last epoch."""
    with tempfile.TemporaryDirectory() as profile:
        url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
        return _run(["--virtual-time-budget=5000", "--dump-dom", url], profile).stdout


def page_status(dom: str) -> tuple[bool, str]:
    """(ready, JavaScript errors) as the page wrote them on its <body> tag."""
    body = re.search(r"<body[^>]*>", dom)
    tag = body.group(0) if body else ""
    errors = re.search(r'data-js-errors="([^"]*)"', tag)
    return 'data-ready="yes"' in tag, errors.group(1) if errors else ""


def screenshot(page: Path, png: Path, fragment: str = "snapshot=-1", size: str = "1400,2600") -> Path:
    """A PNG of the top of the page, at the last recorded epoch by default."""
    with tempfile.TemporaryDirectory() as profile:
        url = Path(page).resolve().as_uri() + (f"#{fragment}" if fragment else "")
        _run([f"--window-size={size}", f"--screenshot={Path(png).resolve()}", url], profile)
    return Path(png)


def main(argv: list[str] | None = None) -> None:
    """Write the page for a default XOR run and its screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", nargs="?", default="docs/xor-explain.png", help="screenshot to write")
    parser.add_argument("--page", default=None, help="also keep the HTML page at this path")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        sys.exit("explain_shot: no Chromium found on PATH (Debian: apt-get install chromium)")
    spec = importlib.util.spec_from_file_location("xor_example", Path(__file__).with_name("xor.py"))
    xor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(xor)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(args.page) if args.page else Path(tmp) / "xor.html"
        with contextlib.redirect_stdout(io.StringIO()):  # the terminal walk: not wanted here
            xor.main(["--explain", "--quiet", "--html", str(page), "--device", "cpu"])
        ready, errors = page_status(dump_dom(page, "snapshot=-1"))
        if not ready or errors:
            sys.exit(f"explain_shot: the page's script did not finish cleanly in Chromium: {errors}")
        screenshot(page, Path(args.png))
    print(f"screenshot written to {args.png}")


if __name__ == "__main__":
    main()
