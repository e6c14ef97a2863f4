#!/usr/bin/env bash
# CPU per connection of two proxies measured side by side: both pinned to the same CPU and loaded
# at the same time by two connection-rate clients (50 at a time each), so whatever else this
# shared machine is doing falls on both alike. A ratio of two builds from one run is steady to
# about 1-2 %, where runs of one build a minute apart differ by 10 % (bench/relay-cost.sh). Each
# repetition starts both proxies fresh, warms them up for 1.5 s, then counts 4 s.
#
# usage: bench/pair-cost.sh A B [REPS]
#   A, B: a built checkout of halfclose (a directory), "haproxy" (tcp mode, nbthread 1, as
#   make bench runs it), or "haproxy-log" (the same writing one tcplog line per connection to
#   stdout, a file). Prints each repetition's CPU µs per connection of both, and B/A.
#   A_NODE_FLAGS, B_NODE_FLAGS: extra node flags for A's or B's halfclose (one build against
#   itself with a V8 flag, say).
set -euo pipefail
a=$1 b=$2 reps=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
workers="$here/dist/bench/workers.js"
cpu=$(($(nproc) - 1))
# Ports above the ephemeral range (32768-60999), so no client connection can hold one.
up_a=61331 up_b=61332 port_a=61333 port_b=61334
source "$(dirname "$0")/lib.sh"

node "$workers" echo ports=$up_a,$up_b >/dev/null 2>&1 < <(sleep 100000) &
pids+=($!)
sleep 0.5

# start WHAT LISTEN UPSTREAM [NODE_FLAGS]: starts a proxy pinned to the last CPU; its pid goes to $started.
start() {
  if [[ $1 == haproxy || $1 == haproxy-log ]]; then
    # haproxy-log: one tcplog line per connection to stdout, which goes to a file, as halfclose's access log does.
    local log=()
    [[ $1 == haproxy-log ]] && log=('  log stdout format raw local0' '  log global' '  option tcplog')
    printf '%s\n' global '  nbthread 1' '  maxconn 9000' defaults '  mode tcp' '  maxconn 9000' \
      '  timeout connect 5s' '  timeout client 1h' '  timeout server 1h' "${log[@]}" \
      listen\ e "  bind 127.0.0.1:$2" "  server up 127.0.0.1:$3" >"$work/haproxy-$2.cfg"
    taskset -c $cpu haproxy -db -f "$work/haproxy-$2.cfg" >"$work/access-$2.log" 2>&1 &
  else
    taskset -c $cpu node ${4:-} "$1/bin/halfclose" proxy --admin 127.0.0.1:0 --route 127.0.0.1:$2=127.0.0.1:$3 \
      >"$work/access-$2.log" 2>"$work/err-$2.log" &
  fi
  started=$!
  pids+=($started)
  for _ in $(seq 100); do
    ss -ltnH "sport = :$2" | grep -q LISTEN && return 0
    sleep 0.05
  done
  echo "pair-cost: $1 did not listen on $2" >&2
  return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# load MS: both clients at once; their results go to $work/a.json and $work/b.json.
load() {
  node "$workers" connrate port=$port_a count=1000000 maxMs=$1 concurrency=50 </dev/null >"$work/a.json" &
  local la=$!
  node "$workers" connrate port=$port_b count=1000000 maxMs=$1 concurrency=50 </dev/null >"$work/b.json"
  wait $la
}
completed() { node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).completed)' "$1"; }

tck=$(getconf CLK_TCK)
for _ in $(seq "$reps"); do
  start "$a" $port_a $up_a "${A_NODE_FLAGS:-}"
  pa=$started
  start "$b" $port_b $up_b "${B_NODE_FLAGS:-}"
  pb=$started
  load 1500
  sleep 0.3
  ca=$(cpu_ticks $pa) cb=$(cpu_ticks $pb)
  load 4000
  ca=$(($(cpu_ticks $pa) - ca)) cb=$(($(cpu_ticks $pb) - cb))
  na=$(completed "$work/a.json") nb=$(completed "$work/b.json")
  awk -v ca=$ca -v cb=$cb -v na=$na -v nb=$nb -v t=$tck 'BEGIN {
    x = ca * 1e6 / t / na; y = cb * 1e6 / t / nb
    printf "A %6.1f µs/conn (%d conns)   B %6.1f µs/conn (%d conns)   B/A %.3f\n", x, na, y, nb, y / x }'
  kill $pa $pb
  wait $pa $pb 2>/dev/null || true
done
