"""Headless Chromium driven over the DevTools protocol, for the browser tests.

`Browser(chromium)` starts Chromium with a fresh profile and the flags this machine needs;
`async with browser.page() as page` opens its first tab, where `page.goto(url)`,
`page.eval(js)` (the value of an expression) and `page.wait_for(js, seconds)` (until the
expression is truthy) work. Used by live_feed.py and devconsole.py.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import asynccontextmanager

import websockets

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--remote-debugging-port=0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_wsd(args, within=10.0):
    """Starts wsd (argv without --port/--address) on a free loopback port: (process, port)."""
    port = free_port()
    proc = subprocess.Popen([args[0], f"--port={port}", "--address=127.0.0.1", *args[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    end = time.monotonic() + within
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"wsd exited with {proc.returncode}: {proc.stdout.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    sys.exit("wsd did not start listening")


def stop(proc):
    """Ends a process this script started, by its process group."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Page:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method, **params):
        self.next_id += 1
        n = self.next_id
        await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def goto(self, url):
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)

    async def eval(self, expression):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression, seconds):
        """Polls until `expression` is truthy; its last value."""
        end = time.monotonic() + seconds
        value = None
        while time.monotonic() < end:
            try:
                value = await self.eval(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            await asyncio.sleep(0.1)
        return value


class Browser:
    def __init__(self, chromium):
        self.profile = tempfile.mkdtemp(prefix="wsd-chromium-")
        self.proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={self.profile}",
                                      "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.devtools = self._devtools_url()

    def _devtools_url(self, within=20.0):
        end = time.monotonic() + within
        buf = b""
        os.set_blocking(self.proc.stderr.fileno(), False)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                sys.exit(f"chromium exited with {self.proc.returncode}: {buf.decode(errors='replace')[-2000:]}")
            buf += self.proc.stderr.read() or b""
            m = re.search(rb"DevTools listening on (ws://\S+)", buf)
            if m:
                return m.group(1).decode()
            time.sleep(0.05)
        sys.exit("chromium did not report its DevTools address: " + buf.decode(errors="replace")[-2000:])

    @asynccontextmanager
    async def page(self):
        http = self.devtools.split("/devtools/")[0].replace("ws://", "http://")
        targets = json.load(urllib.request.urlopen(http + "/json/list", timeout=5))
        target = next(t for t in targets if t["type"] == "page")
        async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            yield Page(ws)

    def close(self):
        stop(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)
