#!/usr/bin/env bash
# The relay's CPU cost, for measuring one optimisation at a time: halfclose's own CPU time (user +
# system, from /proc/PID/stat) per GB relayed each way, per 1,000 connections and per 1,000 round
# trips, with the rate achieved; and its resident memory per idle connection (5,000 held open). On a shared machine a rate swings with everyone else's load; the
# CPU a fixed amount of work costs the proxy swings much less. Medians of REPS runs.
#
# usage: bench/relay-cost.sh [REPS] [REPO] [MODES]
#   REPO: a built checkout (default this one); MODES: any of c2s s2c conn rtt idle (default all)
#   PEER=haproxy measures HAProxy (tcp mode, nbthread 1, as make bench runs it) the same way.
set -euo pipefail
reps=${1:-5}
repo=$(cd "${2:-$(dirname "$0")/..}" && pwd)
node=$(command -v node)
tck=$(getconf CLK_TCK)
# Ports above the ephemeral range (32768-60999), so no client connection can hold one.
p_echo=61311 p_iperf=61312 p_route_echo=61313 p_route_iperf=61314
source "$(dirname "$0")/lib.sh"

"$node" "$repo/dist/bench/workers.js" echo ports=$p_echo >/dev/null 2>&1 < <(sleep 100000) &
pids+=($!)
iperf3 -s -B 127.0.0.1 -p $p_iperf >/dev/null 2>&1 &
pids+=($!)
sleep 0.5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# One run: starts halfclose (pinned to the last CPU, as make bench does), measures MODE, prints
# "cost rate".
one() {
  set +e # a failed measurement prints "NaN NaN" and must still stop its halfclose
  local mode=$1 cpu=$(($(nproc) - 1))
  if [[ ${PEER:-halfclose} == haproxy ]]; then
    # The same measurement of HAProxy as make bench configures it, for a ratio from the same minutes.
    printf '%s\n' global '  nbthread 1' '  maxconn 9000' defaults '  mode tcp' '  maxconn 9000' \
      '  timeout connect 5s' '  timeout client 1h' '  timeout server 1h' \
      listen\ e "  bind 127.0.0.1:$p_route_echo" "  server up 127.0.0.1:$p_echo" \
      listen\ i "  bind 127.0.0.1:$p_route_iperf" "  server up 127.0.0.1:$p_iperf" >"$work/haproxy.cfg"
    taskset -c $cpu haproxy -db -f "$work/haproxy.cfg" >/dev/null 2>"$work/hc.err" &
  else
    taskset -c $cpu "$node" ${HC_NODE_FLAGS:-} "$repo/bin/halfclose" proxy ${HC_ARGS:-} --admin 127.0.0.1:0 \
      --route 127.0.0.1:$p_route_echo=127.0.0.1:$p_echo --route 127.0.0.1:$p_route_iperf=127.0.0.1:$p_iperf \
      >"$work/access.log" 2>"$work/hc.err" &
  fi
  local hc=$!
  pids+=($hc)
  for _ in $(seq 100); do
    ss -ltnpH "sport = :$p_route_iperf" | grep -q "pid=$hc," && break
    sleep 0.05
  done
  local t0 out t1
  t0=$(cpu_ticks $hc)
  case $mode in
    c2s | s2c)
      local r=""
      [[ $mode == s2c ]] && r=-R
      out=$(iperf3 -c 127.0.0.1 -p $p_route_iperf -t 3 -J $r || true)
      [[ $out == *\"error\"* ]] && { echo "relay-cost: iperf3: $(grep -m1 '"error"' <<<"$out")" >&2; cat "$work/hc.err" >&2; }
      t1=$(cpu_ticks $hc)
      echo "$out" | "$node" -e 'const j=JSON.parse(require("fs").readFileSync(0));const b=j.end.sum_received.bytes;console.log(((+process.argv[1])/+process.argv[2]/(b/1e9)).toFixed(3), (j.end.sum_received.bits_per_second/1e9).toFixed(2))' $((t1 - t0)) "$tck" 2>/dev/null || echo NaN NaN
      ;;
    conn)
      out=$("$node" "$repo/dist/bench/workers.js" connrate port=$p_route_echo count=1000000 maxMs=3000 concurrency=50 </dev/null)
      t1=$(cpu_ticks $hc)
      echo "$out" | "$node" -e 'const j=JSON.parse(require("fs").readFileSync(0));console.log(((+process.argv[1])/+process.argv[2]/(j.completed/1000)).toFixed(3), Math.round(j.rate))' $((t1 - t0)) "$tck" 2>/dev/null || echo NaN NaN
      ;;
    rtt)
      out=$("$node" "$repo/dist/bench/workers.js" latency port=$p_route_echo size=1 count=20000 maxMs=10000 </dev/null)
      t1=$(cpu_ticks $hc)
      echo "$out" | "$node" -e 'const j=JSON.parse(require("fs").readFileSync(0));console.log(((+process.argv[1])/+process.argv[2]/(j.samples/1000)).toFixed(4), j.p50.toFixed(1))' $((t1 - t0)) "$tck" 2>/dev/null || echo NaN NaN
      ;;
    idle)
      # As make bench: 50 warm-up connections, RSS, then 5,000 idle connections held by another
      # process (one byte echoed on each), RSS again 0.5 s later.
      "$node" "$repo/dist/bench/workers.js" connrate port=$p_route_echo count=50 maxMs=2000 concurrency=10 </dev/null >/dev/null
      sleep 0.3
      local r0 r1 ip
      r0=$(rss_kib $hc)
      "$node" "$repo/dist/bench/workers.js" idle port=$p_route_echo count=5000 batch=100 >"$work/idle.out" 2>/dev/null < <(sleep 120) &
      ip=$!
      for _ in $(seq 600); do [[ -s $work/idle.out ]] && break; sleep 0.1; done
      sleep "${IDLE_SETTLE:-0.5}"
      r1=$(rss_kib $hc)
      kill $ip 2>/dev/null
      wait $ip 2>/dev/null
      grep -q '"held":5000' "$work/idle.out" && echo "$r0 $r1" | awk '{printf "%.2f %.1f\n", ($2 - $1) / 5000, $2 / 1024}' || echo NaN NaN
      ;;
  esac
  kill -TERM $hc
  wait $hc 2>/dev/null || true
}

declare -A label=(
  [c2s]="CPU s per GB client->server | Gbit/s"
  [s2c]="CPU s per GB server->client | Gbit/s"
  [conn]="CPU s per 1000 connections | conn/s (50 at a time)"
  [rtt]="CPU s per 1000 round trips (1 B) | p50 µs"
  [idle]="KiB per idle connection (RSS, 5000 held) | MiB total"
)
for mode in ${3:-c2s s2c conn rtt idle}; do
  costs=() rates=()
  for _ in $(seq "$reps"); do
    read -r c r < <(one $mode)
    costs+=("$c") rates+=("$r")
  done
  med() { printf '%s\n' "$@" | grep -v NaN | sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
  printf '%-58s %8s | %8s   (runs: %s | %s)\n' "${label[$mode]}" "$(med "${costs[@]}")" "$(med "${rates[@]}")" "${costs[*]}" "${rates[*]}"
done
