"""A minimal W3C WebDriver client over httpx, driving Debian's headless Chromium through its
chromedriver (`apt-get install chromium chromium-driver`; the README's set-up installs them).

Only what the browser tests use: open a page, find elements by CSS selector, read their text and
attributes, type, click, press keys, run a script that reads the page, take a screenshot. Chromium
runs headless with a new empty profile and everything that would reach the network turned off (this
machine has none). The driver is stopped by its PID.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from devstack.serve import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
]  # fmt: skip
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
KEYS = {"tab": "\ue004", "enter": "\ue007"}


class WebDriverError(AssertionError):
    pass


class Browser:
    def __init__(self, http: httpx.Client, session: str) -> None:
        self.http = http
        self.session = session

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, f"/session/{self.session}{path}", json=body)
        value = response.json().get("value")
        if response.status_code >= 400:
            raise WebDriverError(f"{method} {path}: {response.status_code} {value}")
        return value

    # ------------------------------------------------------------------------------- navigation
    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    @property
    def url(self) -> str:
        return str(self._call("GET", "/url"))

    @property
    def title(self) -> str:
        return str(self._call("GET", "/title"))

    def set_window_size(self, width: int, height: int) -> None:
        self._call("POST", "/window/rect", {"width": width, "height": height})

    def script(self, source: str, *args: Any) -> Any:
        """Run `source` (a function body; `return` gives the value) in the page; for reading it only."""
        return self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))
        return path

    # ---------------------------------------------------------------------------------- elements
    def find_all(self, css: str) -> list[str]:
        found = self._call("POST", "/elements", {"using": "css selector", "value": css})
        return [item[ELEMENT] for item in found]

    def find(self, css: str) -> str:
        found = self.find_all(css)
        if not found:
            raise WebDriverError(f"no element matches {css!r} on {self.url}")
        return found[0]

    def text(self, element: str) -> str:
        return str(self._call("GET", f"/element/{element}/text"))

    def attribute(self, element: str, name: str) -> str | None:
        value = self._call("GET", f"/element/{element}/attribute/{name}")
        return None if value is None else str(value)

    def tag(self, element: str) -> str:
        return str(self._call("GET", f"/element/{element}/name"))

    def click(self, element: str) -> None:
        self._call("POST", f"/element/{element}/click", {})

    def type(self, element: str, text: str) -> None:
        self._call("POST", f"/element/{element}/value", {"text": text})

    def active(self) -> str:
        return str(self._call("GET", "/element/active")[ELEMENT])

    def press(self, key: str) -> None:
        """Press and release one key (`tab`, `enter`) on whatever has the focus."""
        code = KEYS[key]
        actions = [{"type": "keyDown", "value": code}, {"type": "keyUp", "value": code}]
        self._call("POST", "/actions", {"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})

    def body_text(self) -> str:
        """The page's text; "" while a navigation replaces the page (its old body is then stale)."""
        try:
            return self.text(self.find("body"))
        except WebDriverError as exc:
            # Chrome reports the old body as stale, or (found just before the navigation replaced
            # it) as a node that "does not belong to the document".
            if any(
                m in str(exc)
                for m in ("stale element", "no element matches", "does not belong to the document")
            ):
                return ""
            raise


@contextlib.contextmanager
def chromium(startup_timeout: float = 30.0) -> Iterator[Browser]:
    """A headless Chromium session; closed, its driver stopped and its profile removed afterwards."""
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).exists():
            raise FileNotFoundError(
                f"{binary} is missing: install Debian's chromium and chromium-driver "
                "(the README's set-up, `make setup`, does: apt-get install chromium chromium-driver)"
            )
    port = free_port()
    profile = tempfile.mkdtemp(prefix="bcsync-chromium-")
    driver = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    session: str | None = None
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                if http.get("/status").json()["value"]["ready"]:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or driver.poll() is not None:
                raise WebDriverError(f"chromedriver did not start on port {port}")
            time.sleep(0.1)
        options = {"binary": CHROMIUM, "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        response = http.post("/session", json={"capabilities": capabilities})
        if response.status_code != 200:
            raise WebDriverError(f"no browser session: {response.status_code} {response.text[:500]}")
        session = str(response.json()["value"]["sessionId"])
        yield Browser(http, session)
    finally:
        if session is not None:
            with contextlib.suppress(httpx.HTTPError):
                http.delete(f"/session/{session}")
        http.close()
        driver.terminate()
        try:
            driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
        shutil.rmtree(profile, ignore_errors=True)
