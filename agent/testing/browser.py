"""The officer's browser for the console's tests and bench: Debian's Chromium, headless.

Playwright drives it, but the browser is Debian's (``apt-get install chromium``, which
install.sh --dev does), not one Playwright downloads: the machines that run the suite have
no network for it. The flags keep it quiet: no sandbox (the suite runs as root in CI), no GPU,
and none of its own background traffic (updates, sync) in what is measured.
"""

from __future__ import annotations

from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def launch(playwright: Any, *extra_args: str) -> Any:
    """A headless Chromium from a started ``sync_playwright()``; close it when done."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*ARGS, *extra_args], headless=True
    )
