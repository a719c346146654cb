"""The README's set-up installs what the browser test needs (issue 19): `make test` (which CI's
`.ci/run` runs on a clean machine) depends on `make browser`, which installs Debian's `chromium` and
`chromium-driver` with apt when they are missing, at the paths the test's WebDriver client uses, so
the browser test never lacks them. The `browser` recipe runs here with `apt-get`, `sudo` and `id`
replaced by scripts that record their calls."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.support import webdriver

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")


def _rule(target: str) -> str:
    found = re.search(rf"^{target}:(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, f"no `{target}` target in the Makefile"
    return found.group(1)


def test_make_test_installs_the_browser_and_ci_runs_make_test() -> None:
    assert "browser" in _rule("test").split()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must run the README's `make test`"
    makefile = (ROOT / "Makefile").read_text()
    assert f"CHROMIUM_BINARY ?= {webdriver.CHROMIUM}\n" in makefile
    assert f"CHROMEDRIVER_BINARY ?= {webdriver.CHROMEDRIVER}\n" in makefile


def _stubs(folder: Path, uid: int, installs: bool = True, apt: bool = True) -> Path:
    """`apt-get`, `sudo` and `id` that record their calls in `calls` (apt-get with its DEBIAN_FRONTEND);
    `apt-get install` creates the two binaries when `installs`."""
    folder.mkdir()
    calls = folder / "calls"
    scripts = {
        "id": f"#!/bin/sh\necho {uid}\n",
        "sudo": f'#!/bin/sh\necho "sudo $*" >> {calls}\nexec "$@"\n',
    }
    if apt:
        binaries = f"{folder}/chromium {folder}/chromedriver"
        create = f'case "$*" in *install*) touch {binaries}; chmod +x {binaries};; esac\n' if installs else ""
        scripts["apt-get"] = f'#!/bin/sh\necho "apt-get $* ($DEBIAN_FRONTEND)" >> {calls}\n{create}'
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return calls


def _browser(folder: Path, path: str) -> subprocess.CompletedProcess[str]:
    assert MAKE is not None, "make is what the README's set-up runs"
    env = {k: v for k, v in os.environ.items() if k != "DEBIAN_FRONTEND"}
    return subprocess.run(
        [MAKE, "-s", "--no-print-directory", "browser",
         f"CHROMIUM_BINARY={folder}/chromium", f"CHROMEDRIVER_BINARY={folder}/chromedriver"],
        cwd=ROOT, env={**env, "PATH": path}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


UPDATE = "apt-get update -q"
INSTALL = "apt-get install -y -q --no-install-recommends chromium chromium-driver"


def test_a_missing_browser_is_installed_with_apt_through_sudo(tmp_path: Path) -> None:
    stubs = tmp_path / "bin"
    calls = _stubs(stubs, uid=1000)
    done = _browser(stubs, f"{stubs}:/usr/bin:/bin")
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls.read_text().splitlines() == [
        f"sudo {UPDATE}", f"{UPDATE} ()",
        # sudo resets the environment: DEBIAN_FRONTEND is given after it, so apt never asks.
        f"sudo env DEBIAN_FRONTEND=noninteractive {INSTALL}", f"{INSTALL} (noninteractive)",
    ]  # fmt: skip


def test_as_root_apt_runs_without_sudo_and_a_present_browser_installs_nothing(tmp_path: Path) -> None:
    stubs = tmp_path / "bin"
    calls = _stubs(stubs, uid=0)
    assert _browser(stubs, f"{stubs}:/usr/bin:/bin").returncode == 0
    assert calls.read_text().splitlines() == [f"{UPDATE} ()", f"{INSTALL} (noninteractive)"]
    calls.unlink()
    assert _browser(stubs, f"{stubs}:/usr/bin:/bin").returncode == 0  # now both are there
    assert not calls.exists()


def test_without_apt_or_the_binaries_after_it_make_fails_saying_what_to_install(
    tmp_path: Path,
) -> None:
    stubs = tmp_path / "bin"
    _stubs(stubs, uid=0, apt=False)
    done = _browser(stubs, str(stubs))  # no apt-get on PATH
    assert done.returncode != 0
    assert "install Chromium and chromedriver" in done.stdout and "chromium chromium-driver" in done.stdout

    other = tmp_path / "other"
    _stubs(other, uid=0, installs=False)  # apt succeeds but puts nothing where the test looks
    done = _browser(other, f"{other}:/usr/bin:/bin")
    assert done.returncode != 0 and "is still missing" in done.stdout, done.stdout
