"""The README's examples, driven by a real WebSocket client library (Python `websockets`).

Each check starts target/release/wsd (or $WSD_BIN) on a free 127.0.0.1 port with one of the
example programs in scripts/, talks to it as a browser or a script would, and kills the server
it started, by PID, when done. Run by scripts/test.sh with the venv's python:

    target/venv/bin/python tests/python/test_clients.py
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WSD = os.environ.get("WSD_BIN", os.path.join(ROOT, "target", "release", "wsd"))
TIMEOUT = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Wsd:
    """wsd serving one program on a free loopback port; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, *program):
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.proc = None
        self.program = [os.path.join(ROOT, program[0]), *program[1:]]

    def __enter__(self):
        self.proc = subprocess.Popen(
            [WSD, "--address=127.0.0.1", f"--port={self.port}", *self.program],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_until_listening()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_until_listening(self):
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wsd exited with {self.proc.returncode} before listening")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"wsd did not listen on port {self.port} within {TIMEOUT} s")
                time.sleep(0.02)

    def __exit__(self, *exc):
        if self.proc is None or self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return False


async def ask(url, send, expect_replies=1):
    async with websockets.connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        await ws.send(send)
        return [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(expect_replies)]


def test_greeter_greets_by_name():
    with Wsd("scripts/greeter.sh") as wsd:
        replies = asyncio.run(ask(wsd.url, "Ada"))
    assert replies == ["Hello, Ada!"], replies


def test_greeter_answers_every_message_in_order():
    async def talk(url):
        async with websockets.connect(url, open_timeout=TIMEOUT) as ws:
            for name in ["Ada", "Grace", "Linus"]:
                await ws.send(name)
            return [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(3)]

    with Wsd("scripts/greeter.sh") as wsd:
        replies = asyncio.run(talk(wsd.url))
    assert replies == ["Hello, Ada!", "Hello, Grace!", "Hello, Linus!"], replies


def test_json_echo_wraps_each_object_with_a_sequence_number():
    with Wsd("scripts/json-echo.py") as wsd:
        replies = asyncio.run(ask(wsd.url, json.dumps({"a": 1})))
    assert [json.loads(r) for r in replies] == [{"seq": 1, "echo": {"a": 1}}], replies


def test_count_sends_ten_numbers_then_closes_with_1000():
    async def listen(url):
        async with websockets.connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            messages = []
            try:
                while True:
                    messages.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
            except websockets.ConnectionClosed:
                pass
            return messages, ws.close_code

    with Wsd("scripts/count.sh") as wsd:
        messages, code = asyncio.run(listen(wsd.url))
    assert messages == [str(i) for i in range(1, 11)], messages
    assert code == 1000, code


def test_plain_http_get_is_told_to_upgrade():
    with Wsd("scripts/greeter.sh") as wsd:
        with socket.create_connection(("127.0.0.1", wsd.port), timeout=TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = s.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 426"), head
    assert "upgrade: websocket" in head.lower(), head


def main():
    tests = [(name, fn) for name, fn in globals().items() if name.startswith("test_") and callable(fn)]
    passed = failed = 0
    for name, fn in tests:
        started = time.monotonic()
        try:
            fn()
        except Exception:
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {name} ({time.monotonic() - started:.2f}s)")
    print(f"python clients: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
