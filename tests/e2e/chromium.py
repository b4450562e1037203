"""Headless Debian Chromium driven by Playwright, for the dashboard's browser tests.

Playwright comes from PyPI without its own browser download: it drives /usr/bin/chromium
(Debian's `chromium`, installed by `make install`). The flags keep Chromium off the network
except for the page it is told to open (without the background-networking ones it floods a
closed network with update, sync and metrics requests) and give each launch a fresh profile.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import BrowserContext, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[BrowserContext]:
    """A headless Chromium on a fresh profile (Playwright's persistent context passes it as
    --user-data-dir), closed and its profile removed after."""
    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium with `make install`")
    profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=list(FLAGS),
                viewport={"width": width, "height": height},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
