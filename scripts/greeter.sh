#!/bin/sh
# Reads one name per message and answers each. wsd --port=8080 scripts/greeter.sh
while read -r name; do
  echo "Hello, $name!"
done
