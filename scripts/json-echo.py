#!/usr/bin/env python3
"""Echoes JSON: each message must be a JSON object; the answer wraps it with a sequence number.

    wsd --port=8080 scripts/json-echo.py

Send {"hello": "world"} and receive {"seq": 1, "echo": {"hello": "world"}}. Anything that is not
JSON gets {"seq": N, "error": "..."}. Flushing after each line matters: Python buffers stdout
when it is a pipe.
"""
import json
import sys

for seq, line in enumerate(sys.stdin, start=1):
    try:
        reply = {"seq": seq, "echo": json.loads(line)}
    except json.JSONDecodeError as e:
        reply = {"seq": seq, "error": str(e)}
    print(json.dumps(reply), flush=True)
