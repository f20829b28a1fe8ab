#!/bin/sh
# The chat room: with --broadcast, one copy runs for everyone; each line a client sends
# comes back to every client, stamped with the time.
#   wsd --port=8080 --broadcast --replay=20 --staticdir=scripts/chat scripts/chat/chat.sh
# then open http://localhost:8080/ in two browser windows.
while IFS= read -r line; do
  printf '%s %s\n' "$(date +%H:%M:%S)" "$line"
done
