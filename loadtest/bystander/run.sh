#!/usr/bin/env bash
# Bystander cost: two nodes on one Redis, every client on node A (receivers and
# publishers); node B holds no member of any room. Reports node B's CPU per published
# message and the room messages it received, in pattern and in rooms mode, beside its
# idle CPU over the same time. Loopback only; bounded by --duration.
#
#   loadtest/bystander/run.sh [rate] [seconds] [rooms] [receivers]
#
# Env: ROOMCAST_BIN, LOADGEN_BIN (default target/release/...).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${ROOMCAST_BIN:-$root/target/release/roomcast}
lg=${LOADGEN_BIN:-$root/target/release/roomcast-loadgen}
rate=${1:-1000}; secs=${2:-20}; rooms=${3:-100}; receivers=${4:-1000}
out=$(mktemp -d)
# free_port, wait_until, redis_up, http_ok: shared with the other scripts.
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$out"; }
trap cleanup EXIT
metric() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

printf '| mode | msg/s | node B CPU, idle (ms/s) | node B CPU under traffic (ms/s) | node B CPU per message (µs) | room messages node B received |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: |\n'
for mode in pattern rooms; do
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
  rpid=$!; pids+=($rpid)
  wait_until 5 redis_up "$rport"
  pa=$(free_port); pb=$(free_port)
  "$bin" --auth none --redis-url "redis://127.0.0.1:$rport" --listen "127.0.0.1:$pa" --node-id a \
    --bus-subscribe "$mode" --rate-limit 1000000 --rate-burst 1000000 --log-level warn >"$out/a.log" 2>&1 &
  apid=$!; pids+=($apid)
  "$bin" --auth none --redis-url "redis://127.0.0.1:$rport" --listen "127.0.0.1:$pb" --node-id b \
    --bus-subscribe "$mode" --log-level warn >"$out/b.log" 2>&1 &
  bpid=$!; pids+=($bpid)
  for p in $pa $pb; do wait_until 10 http_ok "http://127.0.0.1:$p/readyz"; done
  # Node B's idle CPU over the same time.
  t0=$(ticks $bpid); sleep "$secs"; idle=$(( $(ticks $bpid) - t0 ))
  "$lg" --url "ws://127.0.0.1:$pa" --out "$out/fanout.json" fanout --receivers "$receivers" --rooms "$rooms" \
    --publishers 10 --rate "$rate" --duration "$secs" >"$out/lg.log" 2>&1 &
  lgpid=$!
  # Measure B over the publishing window only (the generator ramps up first).
  until jq -e . "$out/fanout.json" >/dev/null 2>&1 || grep -q "publishing" "$out/lg.log" 2>/dev/null; do
    kill -0 $lgpid 2>/dev/null || break; sleep 0.2
    [ "$(metric $pa roomcast_bus_messages_received_total | cut -d. -f1)" -gt 0 ] 2>/dev/null && break
  done
  t1=$(ticks $bpid); s1=$(date +%s.%N); r1=$(metric $pb roomcast_bus_unwanted_room_messages_total)
  wait $lgpid
  t2=$(ticks $bpid); s2=$(date +%s.%N); r2=$(metric $pb roomcast_bus_unwanted_room_messages_total)
  published=$(jq -r '.published' "$out/fanout.json")
  ok=$(jq -r '.ok' "$out/fanout.json")
  python3 - "$mode" "$rate" "$idle" "$secs" "$((t2 - t1))" "$s1" "$s2" "$published" "${r1:-0}" "${r2:-0}" "$hz" "$ok" <<'PY'
import sys
mode, rate, idle, secs, busy, s1, s2, pub, r1, r2, hz, ok = sys.argv[1:]
hz = float(hz); wall = float(s2) - float(s1)
idle_ms = float(idle) * 1000 / hz / float(secs)
busy_ms = float(busy) * 1000 / hz / wall
per = (busy_ms - idle_ms) * 1000 / float(rate)
print(f"| {mode} | {rate} | {idle_ms:.1f} | {busy_ms:.1f} | {per:.2f} | {float(r2) - float(r1):.0f} (of {pub} published; generator ok: {ok}) |")
PY
  kill $apid $bpid $rpid 2>/dev/null; wait $apid $bpid $rpid 2>/dev/null
done
