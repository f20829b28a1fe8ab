#!/usr/bin/env python3
"""scripts/live-feed.html in headless Chromium against a real wsd: the page follows one
shared program (`--broadcast --sse --replay=10 scripts/count.sh`) over WebSocket and over
EventSource, and must show 1 to 10 on both, then the WebSocket's close code 1000 and the
event stream's exit event.

Chromium is driven over the DevTools protocol (a WebSocket, with the `websockets` package).
Usage: live_feed.py WSD_BINARY CHROMIUM_BINARY
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
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "scripts" / "live-feed.html"
COUNT = ROOT / "scripts" / "count.sh"
EXPECTED_WS = [str(i) for i in range(1, 11)] + ["[closed 1000]"]
EXPECTED_SSE = [str(i) for i in range(1, 11)] + ["[exit: exit status 0]"]
DEADLINE = 30.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, within=10.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"wsd exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("wsd did not start listening")


def devtools_url(chrome, within=20.0):
    """The browser's DevTools address, from the line Chromium prints on stderr."""
    end = time.monotonic() + within
    buf = b""
    os.set_blocking(chrome.stderr.fileno(), False)
    while time.monotonic() < end:
        if chrome.poll() is not None:
            sys.exit(f"chromium exited with {chrome.returncode}: {buf.decode(errors='replace')[-2000:]}")
        chunk = chrome.stderr.read() or b""
        buf += chunk
        m = re.search(rb"DevTools listening on (ws://[^\s]+)", buf)
        if m:
            return m.group(1).decode()
        time.sleep(0.05)
    sys.exit("chromium did not report its DevTools address: " + buf.decode(errors="replace")[-2000:])


async def run_page(browser_ws, page_url):
    http = browser_ws.split("/devtools/")[0].replace("ws://", "http://")
    targets = json.load(urllib.request.urlopen(http + "/json/list", timeout=5))
    page = next(t for t in targets if t["type"] == "page")
    async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as cdp:
        ids = iter(range(1, 1_000_000))

        async def call(method, **params):
            n = next(ids)
            await cdp.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await cdp.recv())
                if msg.get("id") == n:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]

        await call("Page.enable")
        await call("Page.navigate", url=page_url)
        end = time.monotonic() + DEADLINE
        shown = {}
        while time.monotonic() < end:
            r = await call(
                "Runtime.evaluate",
                expression="JSON.stringify({ws: document.getElementById('ws')?.textContent ?? null,"
                " sse: document.getElementById('sse')?.textContent ?? null})",
                returnByValue=True,
            )
            shown = json.loads(r["result"]["value"])
            ws = (shown.get("ws") or "").splitlines()
            sse = (shown.get("sse") or "").splitlines()
            if ws[-1:] == EXPECTED_WS[-1:] and sse[-1:] == EXPECTED_SSE[-1:]:
                return ws, sse
            await asyncio.sleep(0.2)
        return (shown.get("ws") or "").splitlines(), (shown.get("sse") or "").splitlines()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    wsd, chromium = sys.argv[1], sys.argv[2]
    port = free_port()
    server = subprocess.Popen(
        [wsd, f"--port={port}", "--address=127.0.0.1", "--broadcast", "--sse", "--replay=10",
         "--header-http=Access-Control-Allow-Origin: *", str(COUNT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    profile = tempfile.mkdtemp(prefix="wsd-chromium-")
    chrome = None
    try:
        wait_port(port, server)
        chrome = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        url = devtools_url(chrome)
        page = f"{PAGE.as_uri()}?server=http://127.0.0.1:{port}/"
        ws, sse = asyncio.run(run_page(url, page))
    finally:
        for proc in (chrome, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    ok = ws == EXPECTED_WS and sse == EXPECTED_SSE
    print(f"WebSocket shown:   {ws}")
    print(f"EventSource shown: {sse}")
    if not ok:
        log = server.stdout.read().decode(errors="replace") if server.stdout else ""
        print("wsd log:\n" + log[-3000:])
    print(f"browser live feed: {'ok' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
