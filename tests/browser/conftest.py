"""Fixtures for tests that drive a real JupyterLab in headless Chromium.

Browser tests are the only way to catch front-end breakage (widget rendering,
comm round-trips, the lab extension), so in CI a missing browser is an error,
not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from .lab import LabServer, start_lab

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_ROOT = REPO_ROOT / "test-output"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

LabServerFactory = Callable[..., LabServer]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives a real JupyterLab in headless Chromium (slow)"
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report so fixtures can save evidence on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    """Fresh ``test-output/<test name>/`` for screenshots and logs."""
    name = re.sub(r"[^\w.-]+", "_", request.node.name).strip("_")
    path = ARTIFACTS_ROOT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture
def lab_server_factory(
    tmp_path: Path, request: pytest.FixtureRequest, artifacts_dir: Path
) -> Iterator[LabServerFactory]:
    """Start JupyterLab servers on demand: ``factory(env={...}, extra_args=[...])``.

    ``env`` is added to the server's environment, so kernels inherit it too.
    Servers are stopped at teardown; their logs land in ``test-output`` on failure.
    """
    servers: list[LabServer] = []

    def factory(
        env: Mapping[str, str] | None = None, extra_args: list[str] | None = None
    ) -> LabServer:
        server = start_lab(tmp_path / f"lab{len(servers)}", env=env, extra_args=extra_args)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
    if _failed(request):
        for i, server in enumerate(servers):
            shutil.copy(server.log_path, artifacts_dir / f"server{i}.log")


@pytest.fixture
def lab_server(request: pytest.FixtureRequest, lab_server_factory: LabServerFactory) -> LabServer:
    """One JupyterLab server; indirect-parametrize with an env dict to add variables."""
    return lab_server_factory(env=getattr(request, "param", None))


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Module-scoped so the sync driver's event loop never outlives the browser tests."""
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """System Chromium; a browser is never downloaded."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (apt-get install chromium)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, artifacts_dir: Path) -> Iterator[Page]:
    """A fresh context and page; on failure, a screenshot and console log are kept."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    console: list[str] = []

    def record(msg: ConsoleMessage) -> None:
        console.append(f"[{msg.type}] {msg.text}")

    page.on("console", record)
    page.on("pageerror", lambda exc: console.append(f"[pageerror] {exc}"))
    yield page
    if _failed(request):
        try:
            page.screenshot(path=artifacts_dir / "failure.png", full_page=True)
        except Exception as exc:  # the page may already be gone
            console.append(f"[harness] screenshot failed: {exc}")
        (artifacts_dir / "console.log").write_text("\n".join(console))
    context.close()
