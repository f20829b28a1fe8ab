#!/usr/bin/env python3
"""The Autobahn TestSuite's cases (run by the `kosoku` fuzzing client) against `wsd cat`, in
text mode and in binary mode.

Every case must end OK, NON-STRICT or INFORMATIONAL, with a clean close. Two exceptions:
- the compression cases (12.*, 13.*) may be UNIMPLEMENTED: wsd does not offer
  permessage-deflate, and a client that asks for it gets plain frames;
- a case listed for its mode in expected-differences.txt, where a line bridge in front of
  `cat` cannot give the echo the case wants; each entry says why.

Afterwards wsd must still be running and have no child left. Exit status 0 only if all holds.

Usage: run.py WSD_BINARY KOSOKU_BINARY OUTDIR
"""

import fnmatch
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected-differences.txt"
# Large enough for the biggest case (9.1.6: a 16 MiB text message).
MAX_MESSAGE = 32 * 1024 * 1024
MODES = {
    "text": [],
    # Binary mode cannot echo a message whole (a pipe hands `cat`'s output over in pieces), so
    # the 9.* cases, which move up to 16 MiB each and wait 100 s for an echo, would only time
    # out; text mode runs them all.
    "binary": ["--binary"],
}
EXCLUDE = {"text": [], "binary": ["9.*"]}
RUN_TIMEOUT = 300
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
CLOSE_ACCEPTED = {"OK", "INFORMATIONAL"}


def case_key(case):
    return [int(p) for p in case.split(".")]


def load_expected():
    """{mode: [(pattern, reason)]} from expected-differences.txt."""
    expected = {mode: [] for mode in MODES}
    for n, line in enumerate(EXPECTED.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        if len(fields) < 3 or fields[0] not in MODES:
            sys.exit(f"{EXPECTED.name}:{n}: expected `MODE CASE REASON`, got {line!r}")
        expected[fields[0]].append((fields[1], fields[2]))
    return expected


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"wsd exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"wsd did not listen on port {port} within {within} s")


def children_of(pid):
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def run_mode(mode, wsd, kosoku, outdir, expected):
    port = free_port()
    log = open(outdir / f"wsd-{mode}.log", "w")
    cmd = [wsd, f"--port={port}", "--address=127.0.0.1", "--loglevel=error",
           f"--maxframesize={MAX_MESSAGE}", *MODES[mode], "cat"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    problems = []
    try:
        wait_listening(port, proc)
        reports = outdir / mode
        args = [kosoku, "-p", "4", "-o", str(reports)]
        for pattern in EXCLUDE[mode]:
            args += ["-x", pattern]
        args.append(f"127.0.0.1:{port}")
        t0 = time.monotonic()
        run = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=RUN_TIMEOUT, text=True)
        took = time.monotonic() - t0
        (outdir / f"kosoku-{mode}.log").write_text(run.stdout)
        index = reports / "index.json"
        if not index.exists():
            print(run.stdout[-3000:])
            return [f"{mode}: kosoku wrote no {index}"]
        results = next(iter(json.loads(index.read_text()).values()))

        counts = {}
        listed_hits = {p: 0 for p, _ in expected[mode]}
        for case in sorted(results, key=case_key):
            r = results[case]
            behavior, close = r["behavior"], r["behaviorClose"]
            counts[behavior] = counts.get(behavior, 0) + 1
            fine = behavior in ACCEPTED and close in CLOSE_ACCEPTED
            if behavior == "UNIMPLEMENTED" and case.split(".")[0] in ("12", "13"):
                fine = close in CLOSE_ACCEPTED
            if fine:
                continue
            entry = next((p for p, _ in expected[mode] if fnmatch.fnmatchcase(case, p)), None)
            if entry is not None:
                listed_hits[entry] += 1
                continue
            problems.append(f"{mode} {case}: behavior={behavior} close={close}: "
                            f"{r.get('description', '')[:120]}")
        # Entries for races are expected to differ only sometimes.
        races = {p for p, reason in expected[mode] if "race" in reason}
        stale = [p for p, hits in listed_hits.items() if hits == 0 and p not in races]
        summary = ", ".join(f"{n} {b}" for b, n in sorted(counts.items()))
        listed = sum(listed_hits.values())
        print(f"autobahn {mode}: {len(results)} cases in {took:.0f} s: {summary}; "
              f"{listed} listed in {EXPECTED.name}; {len(problems)} unexpected")
        if stale:
            print(f"autobahn {mode}: listed but not differing any more (remove?): {' '.join(stale)}")

        if proc.poll() is not None:
            problems.append(f"{mode}: wsd exited with {proc.returncode} during the run")
        else:
            deadline = time.monotonic() + 5
            while children_of(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = children_of(proc.pid)
            if left:
                problems.append(f"{mode}: {len(left)} children still running after the run: {left}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    if proc.returncode not in (0, None):
        problems.append(f"{mode}: wsd exited with {proc.returncode} after SIGTERM")
    return problems


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    wsd, kosoku, outdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    outdir.mkdir(parents=True, exist_ok=True)
    expected = load_expected()
    problems = []
    for mode in MODES:
        problems += run_mode(mode, wsd, kosoku, outdir, expected)
    for p in problems:
        print("UNEXPECTED " + p)
    print(f"reports: {outdir}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
