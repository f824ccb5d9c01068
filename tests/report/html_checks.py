"""Checks shared by the report tests: the pictures an HTML report embeds, external references, and a real
headless Chromium screenshot (Debian's `chromium`; `.ci/run` installs it).

A plain module, not a conftest.py: a second conftest would shadow `from conftest import ...` of
tests/conftest.py.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCREEN = (1200, 2000)  # (width, height) of the Chromium window


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append({k: v or "" for k, v in attrs})


def embedded_pngs(page: str) -> list[tuple[dict[str, str], Image.Image, bytes]]:
    """(attributes, decoded image, PNG bytes) of every <img> of the page; each must be a data: PNG."""
    parser = _Images()
    parser.feed(page)
    out = []
    for attrs in parser.images:
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix), f"an <img> is not an embedded PNG: {attrs['src'][:80]}"
        data = base64.b64decode(attrs["src"][len(prefix):], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{attrs.get('alt')}: not PNG bytes"
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes every pixel: a truncated or corrupt PNG fails here
        assert image.format == "PNG"
        assert (int(attrs["width"]), int(attrs["height"])) == image.size, attrs.get("alt")
        out.append((attrs, image, data))
    return out


_EXTERNAL = [
    re.compile(r"https?://", re.IGNORECASE),
    re.compile(r"""(?:src|href|action|poster|srcset)\s*=\s*["']?\s*//""", re.IGNORECASE),
    re.compile(r"""url\(\s*["']?\s*//""", re.IGNORECASE),
    re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?!data:|#)[a-z][a-z0-9+.-]*:""",
               re.IGNORECASE),  # file:, ftp:, s3: ...
    re.compile(r"@import", re.IGNORECASE),
]


def external_references(page: str) -> list[str]:
    """Everything in the page that could make a browser fetch something from outside the file."""
    return [match.group(0) for pattern in _EXTERNAL for match in pattern.finditer(page)]


def distinct_colours(image: Image.Image) -> int:
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels[:, 0].astype(np.int32) << 16 | pixels[:, 1].astype(np.int32) << 8 | pixels[:,
                                                                                                           2]))


def chromium_path() -> str:
    """The headless browser; missing is a failure (the report must be checked in a real browser)."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("Chromium is not installed, and the report tests must render the HTML in a real browser: "
                "install it with `apt-get install -y chromium` (Debian; `.ci/run` does this).")


def screenshot(page: Path, out: Path) -> Image.Image:
    """Render `page` offline in headless Chromium and return the screenshot."""
    command = [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--window-size={SCREEN[0]},{SCREEN[1]}", f"--screenshot={out}", page.resolve().as_uri()]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=90)
    assert out.exists(), f"Chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    image = Image.open(out)
    image.load()
    return image


def assert_not_blank(image: Image.Image) -> None:
    """A rendered report: many colours, and a good share of pixels that are not the page background."""
    assert image.size == SCREEN
    assert distinct_colours(image) > 200, "the screenshot has almost no colours: the page did not render"
    pixels = np.asarray(image.convert("RGB")).astype(np.int32)
    background = np.asarray([255, 255, 255])
    drawn = (np.abs(pixels - background).sum(axis=2) > 30).mean()
    assert drawn > 0.08, f"only {drawn:.1%} of the screenshot differs from white: the page is (nearly) blank"
