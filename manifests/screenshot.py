"""Render a data card with headless Chromium to `screenshot.png` beside it: `python -m manifests.screenshot DIR`."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def screenshot(report: Path, width: int = 1200, height: int = 7000) -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise FileNotFoundError("chromium is not installed (Debian package `chromium`)")
    target = report / "screenshot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={target}", (report / "index.html").resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return target


if __name__ == "__main__":
    print(screenshot(Path(sys.argv[1])))
