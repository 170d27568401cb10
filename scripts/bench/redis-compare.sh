#!/bin/sh
# The yardstick of the daemon suite (issue 5): redis-benchmark SET over a Unix socket at the daemon
# suite's concurrency (1 and 16 connections, without and with 16-deep pipelining), with redis-server's
# CPU time per request. Run it in the same session as `iommud bench daemon`, so both see the same
# machine load, and compare the two as ratios (docs/performance.md).
# Needs Debian's redis-server and redis-tools (apt-get install -y redis-server redis-tools); Linux.
set -eu
dir=$(mktemp -d)
redis-server --port 0 --unixsocket "$dir/redis.sock" --save '' --appendonly no --daemonize no >"$dir/log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -S "$dir/redis.sock" ] && break; sleep 0.2; done
redis-cli -s "$dir/redis.sock" ping >/dev/null
# utime + stime of redis-server, in clock ticks (fields 14 and 15 of /proc/PID/stat).
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
for case in "1 1" "16 1" "1 16" "16 16"; do
  set -- $case
  n=$(( $1 * $2 > 1 ? 400000 : 100000 ))
  t0=$(ticks)
  rps=$(redis-benchmark -s "$dir/redis.sock" -t set -c "$1" -P "$2" -n "$n" --csv | awk -F'","' '/SET/ { print $2 }')
  t1=$(ticks)
  cpu=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
  echo "redis SET, $1 connection(s), pipelining $2: $rps requests/s, redis-server CPU $cpu µs per request"
done
