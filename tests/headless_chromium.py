"""Open a local page in headless Chromium and record what happened, over the DevTools protocol.

The protocol runs over `--remote-debugging-pipe` (fd 3 in, fd 4 out, NUL-separated JSON), so no port
is opened and no websocket library is needed. What is recorded: console messages, uncaught
exceptions, log entries (CSP violations, failed loads), every network request, the values of a few
JavaScript expressions, a full-page screenshot and one of the first screen.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-pipe",
)


@dataclass
class PageVisit:
    console: list[tuple[str, str]] = field(default_factory=list)
    """(level, text) of console.* calls."""
    exceptions: list[str] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)
    """(level, source, text) of Log.entryAdded: CSP violations, failed loads, ..."""
    requests: list[str] = field(default_factory=list)
    values: dict[str, object] = field(default_factory=dict)
    screenshot: bytes = b""
    """The whole page (up to max_height)."""
    top: bytes = b""
    """The first screen of the page: `width` x 900 pixels."""

    @property
    def errors(self) -> list[str]:
        return (
            [f"console.{level}: {text}" for level, text in self.console if level in ("error", "assert", "warning")]
            + [f"exception: {text}" for text in self.exceptions]
            + [f"log {level} ({source}): {text}" for level, source, text in self.log if level in ("error", "warning")]
        )


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class _Pipe:
    """The browser end of the protocol: send commands, wait for replies, keep every event."""

    def __init__(self, write_fd: int, read_fd: int):
        self.write_fd, self.next_id, self.events = write_fd, 0, []
        self.inbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(read_fd,), daemon=True).start()

    def _read(self, fd: int) -> None:
        buffer = b""
        while chunk := os.read(fd, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self.inbox.put(json.loads(message))
        self.inbox.put(None)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        message = {
            "id": self.next_id,
            "method": method,
            "params": params,
            **({"sessionId": session} if session else {}),
        }
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline, method)
            if reply is None:
                raise RuntimeError(f"chromium closed the pipe during {method}")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _next(self, deadline: float, waiting_for: str) -> dict | None:
        try:
            return self.inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise TimeoutError(f"chromium: nothing from {waiting_for} in time") from None

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            event = self._next(deadline, method)
            if event is None:
                raise RuntimeError(f"chromium closed the pipe before {method}")
            self.events.append(event)


def visit(
    page: Path, expressions: dict[str, str], width: int = 1280, max_height: int = 12000, settle_s: float = 0.5
) -> PageVisit:
    """Load `page` from disk in a fresh profile, evaluate `expressions` and take a full-page screenshot."""
    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError("chromium is not installed")
    to_browser, from_browser = os.pipe(), os.pipe()

    def wire_fds():  # the child's fd 3 reads our commands, its fd 4 writes replies (dup2 makes them inheritable)
        ours = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser[0], from_browser[1])]
        os.dup2(ours[0], 3)
        os.dup2(ours[1], 4)

    # ignore_cleanup_errors: a crashed helper process must not turn a finished visit into an OSError
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds,
            close_fds=False,
            start_new_session=True,
        )  # Python's own fds are not inheritable (PEP 446); a group of its own to stop
        os.close(to_browser[0])
        os.close(from_browser[1])
        pipe = _Pipe(to_browser[1], from_browser[0])
        try:
            return _drive(pipe, page, expressions, width, max_height, settle_s)
        finally:
            _stop(process, pipe)
            os.close(to_browser[1])
            os.close(from_browser[0])


def _stop(process: subprocess.Popen, pipe: _Pipe, grace_s: float = 10) -> None:
    """Close the browser and wait until every process of its group has exited, so nothing still writes to
    the profile directory when it is removed (removing it under a live renderer failed with ENOTEMPTY)."""
    try:
        pipe.call("Browser.close", timeout=grace_s)
    except (OSError, RuntimeError, TimeoutError):
        pass  # it may close the pipe before it answers
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, 9)  # helpers (renderer, zygote) left behind
    except (ProcessLookupError, PermissionError):
        pass
    process.wait(timeout=30)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return  # the whole group is gone
        time.sleep(0.05)


def _drive(
    pipe: _Pipe, page: Path, expressions: dict[str, str], width: int, max_height: int, settle_s: float
) -> PageVisit:
    target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
    session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        pipe.call(f"{domain}.enable", session)
    pipe.call("Emulation.setDeviceMetricsOverride", session, width=width, height=900, deviceScaleFactor=1, mobile=False)
    pipe.call("Page.navigate", session, url=page.resolve().as_uri())
    pipe.wait_for("Page.loadEventFired")
    time.sleep(settle_s)  # late console messages (a timer in a script that should not be there)
    result = PageVisit()
    for name, expression in expressions.items():
        result.values[name] = pipe.call("Runtime.evaluate", session, expression=expression, returnByValue=True)[
            "result"
        ].get("value")
    height = min(int(pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]["height"]), max_height)
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    shot = pipe.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True, clip=clip, timeout=60)
    result.screenshot = base64.b64decode(shot["data"])
    top = pipe.call(
        "Page.captureScreenshot", session, format="png", clip={**clip, "height": min(height, 900)}, timeout=60
    )
    result.top = base64.b64decode(top["data"])
    _collect(pipe.events, session, result)
    return result


def _collect(events: list[dict], session: str, result: PageVisit) -> None:
    for event in (e for e in events if e.get("sessionId") == session):
        params, method = event.get("params", {}), event.get("method")
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            result.console.append((params.get("type", ""), text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            result.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            result.log.append((entry.get("level", ""), entry.get("source", ""), entry.get("text", "")))
        elif method == "Network.requestWillBeSent":
            result.requests.append(params.get("request", {}).get("url", ""))
