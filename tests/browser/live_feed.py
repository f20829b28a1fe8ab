#!/usr/bin/env python3
"""scripts/live-feed.html in headless Chromium against a real wsd: the page follows one
shared program (`--broadcast --sse --replay=10 scripts/count.sh`) over WebSocket and over
EventSource, and must show 1 to 10 on both, then the WebSocket's close code 1000 and the
event stream's exit event.

Usage: live_feed.py WSD_BINARY CHROMIUM_BINARY
"""

import asyncio
import sys
from pathlib import Path

from cdp import Browser, start_wsd, stop

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_WS = [str(i) for i in range(1, 11)] + ["[closed 1000]"]
EXPECTED_SSE = [str(i) for i in range(1, 11)] + ["[exit: exit status 0]"]


async def watch(browser, url):
    async with browser.page() as page:
        await page.goto(url)
        done = "(document.getElementById('ws')?.textContent ?? '').includes('[closed') &&" \
               "(document.getElementById('sse')?.textContent ?? '').includes('[exit')"
        await page.wait_for(done, 30)
        ws = await page.eval("document.getElementById('ws').textContent")
        sse = await page.eval("document.getElementById('sse').textContent")
        return ws.splitlines(), sse.splitlines()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    wsd, chromium = sys.argv[1], sys.argv[2]
    server, port = start_wsd([wsd, "--broadcast", "--sse", "--replay=10",
                              "--header-http=Access-Control-Allow-Origin: *",
                              str(ROOT / "scripts" / "count.sh")])
    browser = None
    try:
        browser = Browser(chromium)
        page = f"{(ROOT / 'scripts' / 'live-feed.html').as_uri()}?server=http://127.0.0.1:{port}/"
        ws, sse = asyncio.run(watch(browser, page))
    finally:
        if browser:
            browser.close()
        stop(server)
    ok = ws == EXPECTED_WS and sse == EXPECTED_SSE
    print(f"WebSocket shown:   {ws}")
    print(f"EventSource shown: {sse}")
    if not ok:
        print("wsd log:\n" + server.stdout.read().decode(errors="replace")[-3000:])
    print(f"browser live feed: {'ok' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
