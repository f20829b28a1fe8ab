#!/usr/bin/env python3
"""The dev console (--devconsole) in headless Chromium: load the page wsd serves, connect,
send two messages through scripts/greeter.sh, recall the first from the history with the Up
key, disconnect; the log must show each step, in order, with the close code. Then a binary
program's output must show as hex.

Usage: devconsole.py WSD_BINARY CHROMIUM_BINARY
"""

import asyncio
import sys
from pathlib import Path

from cdp import Browser, start_wsd, stop

ROOT = Path(__file__).resolve().parents[2]
LOG = "Array.from(document.querySelectorAll('#log div'), d => d.className + ' ' + d.textContent.slice(13))"


async def greeter_session(browser, port):
    async with browser.page() as page:
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for("document.getElementById('connect') && !document.getElementById('connect').disabled", 10)
        url = await page.eval("document.getElementById('url').value")
        await page.eval("document.getElementById('connect').click()")
        await page.wait_for("document.getElementById('state').textContent === 'open'", 10)
        for name in ["Ada", "Grace"]:
            await page.eval(f"document.getElementById('message').value = {name!r};"
                            "document.getElementById('send').click()")
        await page.wait_for("document.querySelectorAll('#log .received').length >= 2", 10)
        # Up recalls the last message sent, Up again the one before.
        await page.eval("""(() => {
            const m = document.getElementById('message');
            for (let i = 0; i < 2; i++) m.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowUp'}));
        })()""")
        recalled = await page.eval("document.getElementById('message').value")
        await page.eval("document.getElementById('disconnect').click()")
        await page.wait_for("document.getElementById('state').textContent === 'closed'", 10)
        return url, recalled, await page.eval(LOG)


async def binary_session(browser, port):
    async with browser.page() as page:
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for("document.getElementById('connect')", 10)
        await page.eval("document.getElementById('connect').click()")
        await page.wait_for("document.querySelectorAll('#log .received').length >= 1", 10)
        return await page.eval(LOG)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    wsd, chromium = sys.argv[1], sys.argv[2]
    greeter, gport = start_wsd([wsd, "--devconsole", str(ROOT / "scripts" / "greeter.sh")])
    binary, bport = start_wsd([wsd, "--devconsole", "--binary", "printf", "AB\\377"])
    browser = None
    try:
        browser = Browser(chromium)
        url, recalled, log = asyncio.run(greeter_session(browser, gport))
        blog = asyncio.run(binary_session(browser, bport))
    finally:
        if browser:
            browser.close()
        stop(greeter)
        stop(binary)
    # Replies may come between the two sends; each direction keeps its order.
    events = [l for l in log if l.startswith("event")]
    sent = [l for l in log if l.startswith("sent")]
    received = [l for l in log if l.startswith("received")]
    log_ok = (
        events == [f"event · connecting to ws://127.0.0.1:{gport}/", "event · open",
                   "event · closed: code 1000, reason: closed from the dev console"]
        and log[:2] == events[:2] and log[-1] == events[-1]
        and sent == ["sent → Ada", "sent → Grace"]
        and received == ["received ← Hello, Ada!", "received ← Hello, Grace!"]
        and log.index("sent → Ada") < log.index("received ← Hello, Ada!")
        and len(log) == 7
    )
    checks = [
        ("address field", url == f"ws://127.0.0.1:{gport}/", url),
        ("log", log_ok, log),
        ("history", recalled == "Ada", recalled),
        ("binary as hex", any(l == "received ← [binary, 3 bytes] 41 42 ff" for l in blog), blog),
    ]
    failed = 0
    for name, ok, got in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got}")
        failed += not ok
    print(f"browser dev console: {'ok' if not failed else 'FAILED'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
