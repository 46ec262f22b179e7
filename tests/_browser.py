"""Open a local HTML page in headless Chromium and report what a reader would see: console errors,
failed loads, broken images and a screenshot.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: it reads
NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4), so no library and no
network port are needed. Every step waits for its reply or event; `timeout_s` only bounds a hang.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", "--hide-scrollbars")  # fmt: skip
BROKEN_IMAGES = (
    "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
    ".map(i => i.getAttribute('src'))"
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageCheck:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, timeout_s: float) -> None:
        self.write_fd, self.read_fd, self.timeout_s = write_fd, read_fd, timeout_s
        self.buffer, self.next_id, self.events = b"", 0, []

    def _message(self) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.read_fd], [], [], self.timeout_s)
            if not ready:
                raise TimeoutError(f"chromium sent nothing for {self.timeout_s} s")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed its DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._message()
            if event.get("method") == method:
                return event
            self.events.append(event)


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            found.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            found.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Network.loadingFailed":
            found.append(f"load failed: {params.get('errorText')}")
    return found


def check_page(page: Path, width: int = 1280, height: int = 2400,
               timeout_s: float = 120.0) -> PageCheck:  # fmt: skip
    """Load `page` (a local file), wait for its load event, and return what `PageCheck` holds."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def wire() -> None:  # in the child: the pipe ends Chromium expects on fds 3 and 4
        reading, writing = os.dup(to_chrome_r), os.dup(from_chrome_w)  # above 4, never 3 or 4
        os.dup2(reading, 3)  # dup2 makes them inheritable
        os.dup2(writing, 4)

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    process = subprocess.Popen(
        [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
         f"--window-size={width},{height}", "about:blank"],
        preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(to_chrome_w, from_chrome_r, timeout_s)
    try:
        target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.call(f"{domain}.enable", session)
        pipe.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        pipe.events.clear()  # about:blank's
        pipe.call("Page.navigate", session, url=page.resolve().as_uri())
        pipe.wait_event("Page.loadEventFired")
        result = PageCheck()
        evaluated = pipe.call("Runtime.evaluate", session, expression=BROKEN_IMAGES,
                              returnByValue=True)  # fmt: skip
        result.broken_images = evaluated["result"]["value"]
        count = pipe.call("Runtime.evaluate", session, expression="document.images.length",
                          returnByValue=True)  # fmt: skip
        result.images = int(count["result"]["value"])
        shot = pipe.call("Page.captureScreenshot", session, format="png")
        result.screenshot = base64.b64decode(shot["data"])
        result.errors = _errors(pipe.events)
        try:
            pipe.call("Browser.close")
        except (EOFError, RuntimeError):
            pass
        return result
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
