# scripts/lib.sh: the shell helpers the scripts under scripts/, deploy/ and loadtest/ share.
# Not a program: source it by the sourcing script's own directory, so that it is found
# whatever the caller's working directory, e.g. from scripts/:
#
#   # shellcheck source=scripts/lib.sh
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# and from deploy/ or loadtest/x/ with `/../scripts/lib.sh` or `/../../scripts/lib.sh`.
# It defines functions only (plus the pass/fail/skip counters, when unset), runs nothing
# and sets no shell options.

# free_port: a free TCP port on 127.0.0.1, picked by the kernel (not reserved: start what
# listens on it soon after). Without python3, a random port nothing answers on.
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "free_port: no free port found" >&2
  return 1
}

# now_us VAR: the time in microseconds since the epoch, into VAR (bash 5's EPOCHREALTIME,
# whatever the locale's decimal separator; whole seconds from date(1) on older shells).
now_us() {
  if [ -n "${EPOCHREALTIME:-}" ]; then
    printf -v "$1" '%s' "${EPOCHREALTIME//[!0-9]/}"
  else
    printf -v "$1" '%s000000' "$(date +%s)"
  fi
}

# wait_until SECONDS CMD...: run CMD until it succeeds, every WAIT_EVERY seconds (default
# 0.1), for at most SECONDS (the last try may run past it by its own length). Fails when
# the time is up.
wait_until() {
  local secs=$1 every=${WAIT_EVERY:-0.1} end now
  shift
  now_us end
  end=$((end + secs * 1000000))
  while :; do
    "$@" && return 0
    now_us now
    ((now >= end)) && return 1
    sleep "$every"
  done
}

# quietly CMD...: CMD with its output and errors discarded (for wait_until).
quietly() { "$@" >/dev/null 2>&1; }

# redis_up PORT: a Redis server answers PONG on 127.0.0.1:PORT (REDIS_CLI_BIN or redis-cli).
redis_up() { [ "$("${REDIS_CLI_BIN:-redis-cli}" -h 127.0.0.1 -p "$1" PING 2>/dev/null)" = PONG ]; }

# http_ok URL: GET URL answers 2xx (for /readyz and /healthz).
http_ok() { curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null; }

# alive PID / gone PID: whether a process runs.
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
gone() { ! alive "$1"; }

# stop_pids SECONDS PID...: SIGTERM each PID, wait up to SECONDS for each to exit, then
# SIGKILL what is left. Only for pids this script started itself.
stop_pids() {
  local grace=$1 p
  shift
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    wait_until "$grace" gone "$p" || kill -9 "$p" 2>/dev/null || true
  done
  return 0
}

# Test results: pass NAME, fail NAME [OUTPUT] (shows OUTPUT's last 30 lines, indented),
# skip NAME; they count into passed, failed and skipped.
: "${passed:=0}" "${failed:=0}" "${skipped:=0}"
pass() { passed=$((passed + 1)); echo "ok      $1"; }
fail() {
  failed=$((failed + 1))
  echo "FAIL    $1"
  if [ -n "${2:-}" ]; then sed 's/^/        /' <<<"$2" | tail -n 30; fi
}
skip() { skipped=$((skipped + 1)); echo "skip    $1"; }
