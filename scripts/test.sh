#!/usr/bin/env bash
# Everything CI checks, runnable from any directory:
#   1. system packages the tests need (as root with apt-get, only when missing): python3-venv,
#      chromium, nginx, systemd
#   2. a Python venv in target/venv with the `websockets` client library
#   3. cargo fmt --check, cargo clippy -D warnings, cargo build --release, cargo test --release
#   4. tests/python/test_clients.py: the README's examples through a real Python client
#   5. tests/autobahn/run.py: the Autobahn TestSuite's cases (PyPI `kosoku`) against `wsd cat`,
#      text and binary mode; differences must all be listed in tests/autobahn/expected-differences.txt
#   6. tests/browser/: scripts/live-feed.html (WebSocket and EventSource against --broadcast --sse)
#      and the --devconsole page in headless Chromium
#   7. websocketd's own integration suite against wsd, when WEBSOCKETD_SRC names a websocketd
#      git checkout; failures must all be listed in tests/peer-suite-expected-failures.txt
# Exit status 0 only if every step that ran passed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The man page test rewrites man/wsd.1 when this is set; a test run must only check it.
unset WSD_UPDATE_MAN

PEER_SUITE=../shared/tools/peer-suite/run.sh
PEER_EXPECTED=tests/peer-suite-expected-failures.txt
VENV=target/venv
started=$SECONDS
passed=() failed=() skipped=() timings=()

say() { printf '\n==> %s\n' "$*"; }

# Runs one named step, recording its verdict and duration; never aborts the script.
step() {
  local name=$1 t0=$SECONDS
  shift
  say "$name"
  if "$@"; then passed+=("$name"); else failed+=("$name"); echo "FAILED: $name"; fi
  timings+=("$name $((SECONDS - t0))s")
}

is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_packages() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
    echo "not root or no apt-get: not installing packages (needed: python3-venv chromium nginx systemd openssl; for the peer suite golang-1.19-go golang-github-gorilla-websocket-dev)"
    return 0
  fi
  # nginx: tests/proxy.rs runs wsd behind it; systemd: systemd-socket-activate and
  # systemd-analyze for tests/systemd.rs (neither is started as a service).
  local wanted=(python3-venv chromium nginx systemd openssl) missing=()
  if [ -n "${WEBSOCKETD_SRC:-}" ]; then
    wanted+=(golang-1.19-go golang-github-gorilla-websocket-dev)
  fi
  for p in "${wanted[@]}"; do
    is_installed "$p" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "already installed: ${wanted[*]}"
    return 0
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

PY_PACKAGES=(websockets kosoku)

python_venv() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import websockets, kosoku' 2>/dev/null; then
    echo "reusing $VENV"
  else
    python3 -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
    echo "created $VENV"
  fi
  "$VENV/bin/python" -c 'import importlib.metadata as m, sys; print(", ".join(p + " " + m.version(p) for p in sys.argv[1:]))' "${PY_PACKAGES[@]}"
}

clippy() {
  if ! cargo clippy --version >/dev/null 2>&1; then
    echo "cargo clippy is not installed: skipped"
    return 0
  fi
  cargo clippy --all-targets -- -D warnings
}

python_clients() {
  WSD_BIN=target/release/wsd "$VENV/bin/python" tests/python/test_clients.py
}

# Reads the suite's JSON verdicts and fails on any failure not in the allow-list.
check_peer_results() {
  "$VENV/bin/python" - "$1" "$PEER_EXPECTED" <<'EOF'
import json, sys

results, allow_file = sys.argv[1], sys.argv[2]
allowed = {}
for line in open(allow_file):
    name, _, reason = line.partition("#")
    if name.strip():
        allowed[name.strip()] = reason.strip()

def entry(test):
    """The allow-list entry a test name (TestCGI001_ScriptExecuted) falls under, if any."""
    for short in allowed:
        full = "Test" + short
        if test == full or test.startswith(full + "_"):
            return short
    return None

data = json.load(open(results))
tests = data.get("tests", [])
if not tests:
    sys.exit("peer-suite: no test verdicts in " + results)
unexpected = [t for t in tests if t["verdict"] == "fail" and entry(t["name"]) is None]
expected = [t for t in tests if t["verdict"] == "fail" and entry(t["name"]) is not None]
now_passing = sorted({entry(t["name"]) for t in tests if t["verdict"] == "pass" and entry(t["name"])})
print(f"expected failures (allow-listed): {len(expected)}; unexpected failures: {len(unexpected)}")
if now_passing:
    print("allow-listed but passing now (remove from " + allow_file + "): " + ", ".join(now_passing))
for t in unexpected:
    print(f"\nUNEXPECTED FAILURE {t['name']} ({t['file']}):")
    print("\n".join(t.get("output", "").splitlines()[:40]))
if data.get("timed_out"):
    sys.exit("peer-suite: timed out")
sys.exit(1 if unexpected else 0)
EOF
}

peer_suite() {
  if ! git -C "$WEBSOCKETD_SRC" rev-parse >/dev/null 2>&1; then
    echo "WEBSOCKETD_SRC=$WEBSOCKETD_SRC is not a git repository (a websocketd checkout, bare is fine)"
    return 1
  fi
  if [ ! -x "$PEER_SUITE" ]; then
    echo "$PEER_SUITE not found (it lives in shared/, beside this repository)"
    return 1
  fi
  local rc=0
  rm -f target/peer-suite.json
  "$PEER_SUITE" --bin target/release/wsd --offline --timeout 5m --json target/peer-suite.json \
    >target/peer-suite.log 2>&1 || rc=$?
  tail -n 1 target/peer-suite.log
  if [ "$rc" -ge 2 ] || [ ! -s target/peer-suite.json ]; then
    echo "peer suite setup failed (exit $rc); the end of target/peer-suite.log:"
    tail -n 30 target/peer-suite.log
    return 1
  fi
  echo "full log: target/peer-suite.log; verdicts: target/peer-suite.json"
  check_peer_results target/peer-suite.json
}

step "system packages" install_packages
step "python venv" python_venv
step "cargo fmt --check" cargo fmt --check
step "cargo clippy" clippy
step "cargo build --release" cargo build --release
if [[ " ${failed[*]} " == *" cargo build --release "* ]]; then
  echo "the build failed: skipping the tests"
else
  step "cargo test --release" cargo test --release
  step "python clients" python_clients
  step "autobahn" "$VENV/bin/python" tests/autobahn/run.py target/release/wsd "$VENV/bin/kosoku" target/autobahn
  chromium_bin=$(command -v chromium || echo chromium-not-installed)
  step "browser: live feed" "$VENV/bin/python" tests/browser/live_feed.py target/release/wsd "$chromium_bin"
  step "browser: dev console" "$VENV/bin/python" tests/browser/devconsole.py target/release/wsd "$chromium_bin"
  if [ -n "${WEBSOCKETD_SRC:-}" ]; then
    step "peer suite" peer_suite
  else
    echo "peer-suite: skipped (set WEBSOCKETD_SRC to a websocketd checkout to run websocketd's own suite)"
    skipped+=("peer suite")
  fi
fi

say "summary ($((SECONDS - started))s)"
for t in "${timings[@]}"; do echo "  $t"; done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed steps:'; printf ' [%s]' "${failed[@]}"; echo
fi
echo "test.sh: ${#passed[@]} passed, ${#failed[@]} failed, ${#skipped[@]} skipped"
[ ${#failed[@]} -eq 0 ]
