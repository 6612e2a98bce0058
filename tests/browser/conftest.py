"""Fixtures for end-to-end browser tests: Debian's Chromium driven by Playwright.

The tests need ``/usr/bin/chromium`` (``make browser`` installs it on Debian/Ubuntu). Without
it they are skipped on a developer machine and fail under CI (``CI`` set), so a CI image
that lost its browser cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

# The real gateway on loopback, its scripted upstream and a Redis client (shared fixtures).
from tests.gateway.conftest import gateway, redis_sync, scripted_upstream

__all__ = ["artifacts", "browser", "chromium", "gateway", "redis_sync", "scripted_upstream"]

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
REPO_ARTIFACTS = REPO / "var" / "test-artifacts"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The Chromium executable (skips or fails the test when it is missing, see above)."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing: run `make browser` (installs Debian's chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def browser(chromium: Path) -> Iterator[Browser]:
    """A headless Chromium, for one test only: Playwright's sync API runs an event loop in
    this thread while it is open, which async tests elsewhere must not find running."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


class Artifacts:
    """Where a test leaves files for people to look at: ``$ANTIDISTILL_TEST_ARTIFACTS`` or
    the test's tmp dir; :meth:`keep` also copies a file to ``var/test-artifacts/`` in the
    repository (git-ignored)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def keep(self, path: Path) -> Path:
        REPO_ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = REPO_ARTIFACTS / path.name
        if path.resolve() != target.resolve():
            shutil.copyfile(path, target)
        return target


@pytest.fixture
def artifacts(tmp_path: Path) -> Artifacts:
    configured = os.environ.get("ANTIDISTILL_TEST_ARTIFACTS")
    return Artifacts(Path(configured) if configured else tmp_path / "artifacts")
