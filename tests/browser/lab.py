"""Launch a real JupyterLab server and drive it from Playwright.

Kept separate from ``conftest.py`` so the helpers can be imported by tests and
reused outside pytest (e.g. for manual debugging of a failing browser test).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import nbformat
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

STARTUP_TIMEOUT_S = 60.0

# User settings that silence the news / update toasts, which otherwise cover the
# notebook and can swallow clicks.  Written into the isolated settings dir.
_QUIET_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False,
        "fetchNews": "false",
    },
}


@dataclass
class LabServer:
    """A running ``jupyter lab`` subprocess owned by a test."""

    url: str
    token: str
    root_dir: Path
    env: dict[str, str] = field(repr=False)
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def log_tail(self, chars: int = 4000) -> str:
        """Last part of the server log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the whole process group, so kernels die with the server."""
        if self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue


def free_port() -> int:
    """A TCP port that was free a moment ago (the server is told not to retry)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _isolated_env(base: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Per-server Jupyter/IPython dirs; system data dirs stay visible for extensions."""
    env = dict(os.environ)
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "config",
        "JUPYTER_DATA_DIR": base / "data",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "IPYTHONDIR": base / "ipython",
    }
    for name, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    # This checkout's built extension comes first (the user data dir), over an installed one.
    built = Path(__file__).resolve().parents[2] / "jupyter_agent" / "labextension"
    if (built / "package.json").exists():
        link = dirs["JUPYTER_DATA_DIR"] / "labextensions" / "jupyter-agent"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(built, target_is_directory=True)
    settings_dir = dirs["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings"
    for rel, value in _QUIET_SETTINGS.items():
        target = settings_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    env.update(extra or {})
    return env


def _server_config() -> dict[str, object]:
    """Config that JSON expresses better than the CLI (``None`` values)."""
    return {
        "LabApp": {
            "news_url": None,
            "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
            "expose_app_in_browser": True,
        },
    }


def _wait_ready(server: LabServer, timeout: float) -> None:
    """Poll ``/api/status`` until the server answers or dies."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        f"{server.url}/api/status", headers={"Authorization": f"token {server.token}"}
    )
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"jupyter lab not ready after {timeout:.0f}s:\n{server.log_tail()}")


def start_lab(
    base: Path,
    env: Mapping[str, str] | None = None,
    extra_args: list[str] | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
) -> LabServer:
    """Start ``jupyter lab`` with isolated state under ``base`` and wait until it serves."""
    root_dir = base / "notebooks"
    root_dir.mkdir(parents=True, exist_ok=True)
    server_env = _isolated_env(base, env)
    config_dir = Path(server_env["JUPYTER_CONFIG_DIR"])
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(_server_config()))
    token = secrets.token_hex(16)
    last_error: Exception | None = None
    for attempt in range(3):  # a port may be grabbed between free_port() and bind()
        port = free_port()
        log_path = base / f"server-{attempt}.log"
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--allow-root",
            "--no-browser",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.root_dir={root_dir}",
            "--LabApp.news_url=None",
            "--LabApp.extension_manager=readonly",
            *(extra_args or []),
        ]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=root_dir,
                env=server_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = LabServer(
            url=f"http://127.0.0.1:{port}",
            token=token,
            root_dir=root_dir,
            env=server_env,
            log_path=log_path,
            proc=proc,
        )
        try:
            _wait_ready(server, timeout)
            return server
        except RuntimeError as exc:
            last_error = exc
            if "address already in use" not in server.log_tail().lower():
                raise
    raise RuntimeError(f"could not bind a port for jupyter lab: {last_error}")


# --- page helpers ---------------------------------------------------------------------------

_KERNEL_STATUS_JS = """() => {
    const app = window.jupyterapp;
    const widget = app && app.shell.currentWidget;
    const kernel = widget && widget.sessionContext && widget.sessionContext.session
        && widget.sessionContext.session.kernel;
    if (kernel) return kernel.status;
    const el = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) '
        + '.jp-Notebook-ExecutionIndicator');
    return el ? el.getAttribute('data-status') : null;
}"""


def kernel_idle(page: Page) -> bool:
    """Whether the current notebook's kernel reports ``idle``."""
    return page.evaluate(_KERNEL_STATUS_JS) == "idle"


def wait_for_kernel_idle(page: Page, timeout: float = 30_000) -> None:
    """Block until the current notebook's kernel is idle (timeout in ms)."""
    page.wait_for_function(f"() => ({_KERNEL_STATUS_JS})() === 'idle'", timeout=timeout)


def dismiss_toasts(page: Page) -> None:
    """Close any notification toasts so they cannot cover cells or buttons."""
    buttons = page.locator(".Toastify__close-button")
    for i in reversed(range(buttons.count())):
        button = buttons.nth(i)
        if button.is_visible():
            button.click()


def open_notebook(page: Page, server: LabServer, path: str, timeout: float = 45_000) -> None:
    """Open ``path`` (relative to the server root) and wait for an idle kernel."""
    page.goto(f"{server.url}/lab/tree/{quote(path)}?token={server.token}")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").wait_for(timeout=timeout)
    if page.evaluate("() => Boolean(window.jupyterapp)"):
        page.evaluate(
            "() => window.jupyterapp.restored.then("
            "() => window.jupyterapp.shell.currentWidget.sessionContext.ready)"
        )
    wait_for_kernel_idle(page, timeout)
    dismiss_toasts(page)


_WATCH_PROMPTS_JS = """() => {
    // Notes whether any cell was queued ("[*]") from now on: the mark may come and go
    // between two polls, so it is watched rather than looked for.
    window.__agentRunStarted = false;
    if (window.__agentRunWatch) window.__agentRunWatch.disconnect();
    window.__agentRunWatch = new MutationObserver(records => {
        for (const r of records) {
            const text = r.target.nodeType === Node.TEXT_NODE;
            const el = text ? r.target.parentElement : r.target;
            if (!el || !el.closest('.jp-InputPrompt')) continue;
            const shown = [text ? r.target.data : '',
                ...[...r.addedNodes].map(n => n.textContent || '')];
            if (shown.some(t => t.includes('[*]'))) window.__agentRunStarted = true;
        }
    });
    window.__agentRunWatch.observe(document.body,
        {subtree: true, childList: true, characterData: true});
}"""

_RUN_STARTED_JS = """() => window.__agentRunStarted || [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt')].some(
        el => el.textContent.includes('[*]'))"""


def run_all_cells(page: Page, timeout: float = 60_000, attempts: int = 3) -> None:
    """Run every cell of the current notebook and wait until execution finished.

    A menu click or command that lands while the page is still settling can be
    dropped without a trace (seen in Notebook 7: every prompt still ``[ ]``), so
    the run must be seen to start, and is asked for again when it was not.
    """
    has_app = page.evaluate("() => Boolean(window.jupyterapp)")
    for attempt in range(attempts):
        page.evaluate(_WATCH_PROMPTS_JS)
        if has_app:
            # The command's promise resolves only after every queued cell ran.
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        else:
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(_RUN_STARTED_JS, timeout=10_000)
            break
        except PlaywrightTimeoutError:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")  # a menu left open
    page.wait_for_function(
        "() => ![...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
        ".jp-InputPrompt')].some(el => el.textContent.includes('[*]'))",
        timeout=timeout,
    )
    wait_for_kernel_idle(page, timeout)


def wait_for_text(page: Page, text: str, timeout: float = 15_000, within: str = "body") -> None:
    """Wait until ``text`` is visible inside an element matching ``within``.

    Narrow ``within`` (e.g. ``.jp-OutputArea-output``) when the text also occurs
    in cell sources, which are rendered on the page too.
    """
    page.locator(within).get_by_text(text).first.wait_for(state="visible", timeout=timeout)


def write_notebook(path: Path, cells: list) -> None:
    """Write ``cells`` as a notebook with a kernelspec, so Lab starts the kernel without asking."""
    nb = nbformat.v4.new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {
                "name": "python3",
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            }
        },
    )
    nbformat.write(nb, path)
