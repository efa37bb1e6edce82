"""A headless Chromium for looking at the services' UI: Debian's package, unpacked under var/, no system change.

``chromium()`` fetches the ``chromium`` package with ``apt-get download``, with those of its shared-library
dependencies this system lacks (followed recursively, the first of each set of alternatives skipped: that
is GTK or a desktop portal, which headless mode never loads), unpacks them with ``dpkg-deb -x`` into
``var/browser/root`` and runs nothing as root but the browser itself. A stamp file makes later calls free.

``Browser`` runs that binary headless (``--no-sandbox``: it only ever opens this machine's own loopback
pages, and the sandbox needs user namespaces a container may not grant) in its own process group, and
speaks the DevTools protocol over a websocket (``websockets``, pinned in requirements.txt) to set a
cookie, open a page, wait for its text, and take a screenshot and the DOM. ``close`` ends the group.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HOME = PROJECT_ROOT / "var" / "browser"
PACKAGE = "chromium"
BINARY = Path("usr/lib/chromium/chromium")
"""The browser inside the unpacked package (/usr/bin/chromium is a wrapper script)."""


class BrowserError(RuntimeError):
    """The browser failed: it did not start, or a DevTools call was refused."""


class BrowserUnavailable(BrowserError):
    """This machine cannot fetch the browser (no apt tools, no package index): a test skips, naming why."""


# --- the unpacked package -----------------------------------------------------------------------


def _installed(package: str) -> bool:
    answer = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return answer.returncode == 0 and answer.stdout.endswith("install ok installed")


def _depends(package: str) -> list[str]:
    answer = subprocess.run(
        ["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
         "--no-replaces", "--no-enhances", package],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return plain_depends(answer.stdout)


def plain_depends(apt_cache_depends: str) -> list[str]:
    """The plain Depends in ``apt-cache depends`` output: a set of alternatives (a ``|Depends`` line and
    the one after it) is left out, and so are virtual packages (``<name>``) and their providers."""
    found, in_alternatives = [], False
    for line in apt_cache_depends.splitlines()[1:]:
        if not line.startswith("  ") or line.startswith("   "):
            continue  # a provider listed under a virtual package
        kind, _, name = line.strip().partition(" ")
        if kind == "|Depends:":
            in_alternatives = True
        elif kind == "Depends:":
            if not in_alternatives and not name.startswith("<"):
                found.append(name)
            in_alternatives = False
    return found


def packages_to_fetch(root_package: str = PACKAGE) -> list[str]:
    """``root_package`` and every dependency, recursively, that dpkg does not have installed."""
    todo, seen = [root_package], set()
    while todo:
        package = todo.pop()
        if package not in seen:
            seen.add(package)
            todo += [d for d in _depends(package) if d not in seen and not _installed(d)]
    return sorted(seen)


def _library_path(root: Path) -> str:
    """Every folder of the unpacked tree holding shared libraries (libpulse's live in a subfolder)."""
    return os.pathsep.join(sorted({str(lib.parent) for lib in (root / "usr" / "lib").rglob("*.so*")}))


def browser_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [_library_path(root), env.get("LD_LIBRARY_PATH")]))
    return env


def _missing_libraries(root: Path) -> list[str]:
    ldd = subprocess.run(["ldd", str(root / BINARY)], capture_output=True, text=True, env=browser_env(root))
    return [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]


def chromium(home: Path = HOME, *, out: Callable[[str], None] = print) -> Path:
    """The unpacked tree's root (the binary is ``root / BINARY``), fetched once into ``home``."""
    root, stamp = home / "root", home / "root.stamp"
    if stamp.is_file() and (root / BINARY).is_file():
        return root
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "dpkg-query"):
        if shutil.which(tool) is None:
            raise BrowserUnavailable(f"{tool} not found: the headless browser is Debian's {PACKAGE} package")
    shutil.rmtree(root, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    debs = home / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    packages = packages_to_fetch()
    out(f"fetching {PACKAGE} and {len(packages) - 1} packages it needs that the system lacks into {home}")
    fetched = subprocess.run(["apt-get", "download", *packages], cwd=debs, capture_output=True, text=True)
    if fetched.returncode:
        raise BrowserUnavailable(f"apt-get download {' '.join(packages)} failed:\n{fetched.stderr[-2000:]}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
    shutil.rmtree(debs)
    missing = _missing_libraries(root)
    if missing:
        raise BrowserError(f"{root / BINARY} still lacks {', '.join(missing)}: which package has them?")
    stamp.write_text(json.dumps({"packages": packages}) + "\n")
    return root


def _kill_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group ``pgid`` (fields 3 and 5 of /proc/<pid>/stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            found.append(int(stat.parent.name))
    return found


# --- the running browser ---------------------------------------------------------------------------


class Browser:
    """One headless Chromium and one page of it, driven over the DevTools protocol."""

    def __init__(self, *, width: int = 1400, height: int = 900, log: Path | None = None):
        from websockets.sync.client import connect

        root = chromium()
        self.profile = Path(tempfile.mkdtemp(prefix="profile-", dir=HOME))
        self.log = log or HOME / "chromium.log"
        command = [
            str(root / BINARY), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--remote-debugging-port=0",
            f"--window-size={width},{height}", f"--user-data-dir={self.profile}", "about:blank",
        ]  # fmt: skip
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=browser_env(root), start_new_session=True,
            )  # fmt: skip
        try:
            port_file = self.profile / "DevToolsActivePort"  # Chromium writes its port and browser path there
            deadline = time.monotonic() + 60
            while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise BrowserError(f"Chromium did not open its DevTools port; see {self.log}")
                time.sleep(0.2)
            port, path = port_file.read_text().split()
            self.socket = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30)
            self._id = 0
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            # The window's size less its (invisible) frame would be the viewport; this makes it exact.
            viewport = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            self.page("Emulation.setDeviceMetricsOverride", **viewport)
        except BaseException:
            self.close()
            raise

    def send(self, method: str, *, session: str | None = None, timeout: float = 60, **params):
        """One DevTools command; returns its result (events that arrive meanwhile are dropped)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            answer = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def page(self, method: str, **params):
        return self.send(method, session=self.session, **params)

    def set_cookie(self, url: str, name: str, value: str) -> None:
        self.page("Network.setCookie", url=url, name=name, value=value, httpOnly=True)

    def evaluate(self, expression: str):
        return self.page("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, *, until: str = "true", timeout: float = 60) -> bool:
        """Go to ``url`` and wait for its load and for the JavaScript condition ``until``; False if it never held."""
        self.page("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(f"document.readyState === 'complete' && Boolean({until})"):
                time.sleep(2)  # what is drawn after it (icons, chart animations) gets a moment
                return True
            time.sleep(0.5)
        return False

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def url(self) -> str:
        return self.evaluate("location.href")

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML")

    def screenshot(self, path: Path) -> Path:
        data = self.page("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """End the browser's process group (renderers and GPU helpers included) and its profile."""
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if not _kill_group(self.process.pid, sig):
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + 5
        while self.processes() and time.monotonic() < deadline:  # helpers still leaving the group
            _kill_group(self.process.pid, signal.SIGKILL)
            time.sleep(0.2)
        shutil.rmtree(self.profile, ignore_errors=True)

    def processes(self) -> list[int]:
        """Live (not zombie) processes of the browser's process group."""
        return group_members(self.process.pid)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
