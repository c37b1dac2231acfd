"""Headless Chromium driven over the DevTools protocol (aiohttp's websocket client, already installed with
Ray): open a page, collect its console errors and failed loads, run script in it, click, screenshot."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class Page:
    """One browser tab. ``errors`` gathers console errors, uncaught exceptions and failed loads."""

    def __init__(self, ws):
        self.ws, self.next_id, self.errors, self.events = ws, 0, [], []

    async def call(self, method: str, **params):
        self.next_id += 1
        ident = self.next_id
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self._receive()
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def wait_for(self, event: str, timeout: float = 30.0):
        seen = [e for e in self.events if e.get("method") == event]
        if seen:
            return seen[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = await asyncio.wait_for(self._receive(), deadline - time.monotonic())
            if message.get("method") == event:
                return message
        raise TimeoutError(event)

    async def _receive(self) -> dict:
        message = await self.ws.receive_json()
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(params["entry"].get("text", "") + " " + params["entry"].get("url", ""))
        elif method == "Network.loadingFailed":
            self.errors.append(f"failed to load: {params.get('errorText')}")
        if method:
            self.events.append(message)
        return message

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the element ``selector`` names."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])


async def _open(url: str, width: int, height: int, work):
    import aiohttp

    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--no-first-run", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Runtime", "Log", "Page", "Network"):
                    await page.call(f"{domain}.enable")
                await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                deviceScaleFactor=1, mobile=False)  # fmt: skip
                await page.call("Page.navigate", url=url)
                await page.wait_for("Page.loadEventFired")
                return await work(page)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def with_page(path: Path, work, width: int = 1400, height: int = 1000):
    """Open the local file ``path`` in headless Chromium and return ``await work(page)``."""
    os.environ.setdefault("CHROME_LOG_FILE", os.devnull)
    return asyncio.run(_open(Path(path).resolve().as_uri(), width, height, work))
