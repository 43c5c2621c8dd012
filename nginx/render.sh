#!/bin/sh
# Render nginx/roomcast.conf.template into a complete nginx.conf.
#
#   render.sh [TEMPLATE] > nginx.conf
#
# Input is the environment (see the placeholder list at the top of the template):
#   NGINX_UPSTREAMS (required)  "host:port,host:port" or space separated
#   NGINX_RESOLVE=1             add `resolve` to every upstream server and a resolver line
#   NGINX_RESOLVER              resolver address(es) for NGINX_RESOLVE=1 (127.0.0.11: Docker's DNS)
#   NGINX_RESOLVER_VALID        how long to cache answers (5s)
#   NGINX_CLIENT_SNDBUF         send buffer of client sockets (256k; see the template)
#   NGINX_WORKER_RLIMIT_NOFILE  descriptors per worker (default: `ulimit -Hn` here, at most 65536)
#   NGINX_LISTEN NGINX_SERVER_NAME NGINX_PROXY_TIMEOUT NGINX_WORKER_PROCESSES
#   NGINX_PID_FILE NGINX_ERROR_LOG NGINX_ACCESS_LOG NGINX_TEMP_DIR
#
# POSIX sh + awk only, so that it runs in the official nginx image, in Debian and in CI.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
template=${1:-$here/roomcast.conf.template}
[ -r "$template" ] || { echo "render.sh: cannot read template $template" >&2; exit 2; }
[ -n "${NGINX_UPSTREAMS:-}" ] || { echo "render.sh: NGINX_UPSTREAMS is empty (host:port list)" >&2; exit 2; }

resolve=${NGINX_RESOLVE:-0}
if [ "$resolve" = 1 ]; then
  RENDER_RESOLVER="resolver ${NGINX_RESOLVER:-127.0.0.11} valid=${NGINX_RESOLVER_VALID:-5s} ipv6=off;"
  RENDER_SERVER_SUFFIX=" resolve"
else
  RENDER_RESOLVER="# no resolver: upstream names are resolved at start and on reload"
  RENDER_SERVER_SUFFIX=""
fi

RENDER_WORKER_PROCESSES=${NGINX_WORKER_PROCESSES:-auto}
RENDER_PID_FILE=${NGINX_PID_FILE:-/tmp/nginx/nginx.pid}
RENDER_ERROR_LOG=${NGINX_ERROR_LOG:-stderr}
# `access_log off` takes no format; a path takes the template's (tokens left out).
RENDER_ACCESS_LOG=${NGINX_ACCESS_LOG:-/dev/stdout}
[ "$RENDER_ACCESS_LOG" = off ] || RENDER_ACCESS_LOG="$RENDER_ACCESS_LOG roomcast_notoken"
RENDER_TEMP_DIR=${NGINX_TEMP_DIR:-/tmp/nginx}
RENDER_LISTEN=${NGINX_LISTEN:-80}
RENDER_SERVER_NAME=${NGINX_SERVER_NAME:-_}
RENDER_PROXY_TIMEOUT=${NGINX_PROXY_TIMEOUT:-120s}
RENDER_CLIENT_SNDBUF=${NGINX_CLIENT_SNDBUF:-256k}
# What this machine (or container) allows: a worker_rlimit_nofile above the hard limit
# makes every worker log "[alert] setrlimit(RLIMIT_NOFILE, ...) failed".
# shellcheck disable=SC3045 # ulimit -H: dash, busybox ash and bash all have it
hard=$(ulimit -H -n 2>/dev/null || echo unlimited)
case $hard in ''|*[!0-9]*) hard=65536 ;; esac
[ "$hard" -gt 65536 ] && hard=65536
RENDER_WORKER_RLIMIT_NOFILE=${NGINX_WORKER_RLIMIT_NOFILE:-$hard}
RENDER_UPSTREAMS=$(printf '%s' "$NGINX_UPSTREAMS" | tr ',' ' ')
export RENDER_RESOLVER RENDER_SERVER_SUFFIX RENDER_WORKER_PROCESSES RENDER_PID_FILE \
  RENDER_ERROR_LOG RENDER_ACCESS_LOG RENDER_TEMP_DIR RENDER_LISTEN RENDER_SERVER_NAME \
  RENDER_PROXY_TIMEOUT RENDER_CLIENT_SNDBUF RENDER_UPSTREAMS RENDER_WORKER_RLIMIT_NOFILE

awk '
function subst(line, name, value,   key, i) {
  key = "{{" name "}}"
  while ((i = index(line, key)) > 0)
    line = substr(line, 1, i - 1) value substr(line, i + length(key))
  return line
}
{
  line = $0
  # Comments (the placeholder documentation at the top) are copied as they are.
  if (line ~ /^[ \t]*#/) { print line; next }
  # {{UPSTREAM_SERVERS}} or {{UPSTREAM_SERVERS PARAMS}}: one server line per upstream, with
  # PARAMS (max_fails=..., fail_timeout=...: the template says why each block has its own).
  if (match(line, /\{\{UPSTREAM_SERVERS( [^}]*)?\}\}/)) {
    indent = line; sub(/[^ \t].*$/, "", indent)
    params = substr(line, RSTART + 18, RLENGTH - 20)
    n = split(ENVIRON["RENDER_UPSTREAMS"], ups, " ")
    count = 0
    for (k = 1; k <= n; k++) {
      if (ups[k] == "") continue
      print indent "server " ups[k] params ENVIRON["RENDER_SERVER_SUFFIX"] ";"
      count++
    }
    if (count == 0) { print "render.sh: no upstream servers" > "/dev/stderr"; exit 3 }
    next
  }
  split("WORKER_PROCESSES PID_FILE ERROR_LOG ACCESS_LOG TEMP_DIR LISTEN SERVER_NAME PROXY_TIMEOUT CLIENT_SNDBUF RESOLVER WORKER_RLIMIT_NOFILE", names, " ")
  for (k in names) line = subst(line, names[k], ENVIRON["RENDER_" names[k]])
  if (line ~ /\{\{[A-Z_]+\}\}/) {
    print "render.sh: unknown placeholder left in: " line > "/dev/stderr"; exit 3
  }
  print line
}' "$template"
