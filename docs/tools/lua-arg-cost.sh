#!/bin/sh
# What an argument costs a Redis script: runs an empty script (`return 1`) with one argument of
# 0, 100, 1,000, 3,500 and 35,000 bytes, and prints Redis's own time per call (INFO
# commandstats, so client and network time are not counted).
#
# Usage: docs/tools/lua-arg-cost.sh [host] [port]   (default 127.0.0.1 6379)
# Needs redis-cli and redis-benchmark. Resets the server's command statistics.
set -eu
host=${1:-127.0.0.1}
port=${2:-6379}
cli() { redis-cli -h "$host" -p "$port" "$@"; }
sha=$(cli SCRIPT LOAD "return 1")
for size in 0 100 1000 3500 35000; do
    arg=$(head -c "$size" /dev/zero | tr '\0' 'y')
    cli CONFIG RESETSTAT >/dev/null
    if [ "$size" -eq 0 ]; then
        redis-benchmark -h "$host" -p "$port" -q -n 20000 -P 16 EVALSHA "$sha" 0 >/dev/null
    else
        redis-benchmark -h "$host" -p "$port" -q -n 20000 -P 16 EVALSHA "$sha" 0 "$arg" >/dev/null
    fi
    per_call=$(cli INFO commandstats | tr -d '\r' | grep '^cmdstat_evalsha:' | sed 's/.*usec_per_call=\([0-9.]*\).*/\1/')
    echo "argument of $size bytes: $per_call µs per call"
done
