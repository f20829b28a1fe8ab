#!/bin/sh
# Counts from 1 to 10, one number a line, half a second apart: every line becomes a
# WebSocket message. Try it: wsd --port=8080 scripts/count.sh
for i in 1 2 3 4 5 6 7 8 9 10; do
  echo "$i"
  sleep 0.5
done
