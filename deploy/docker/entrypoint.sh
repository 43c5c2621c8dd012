#!/bin/bash
# Container entrypoint: raise the soft open-files limit (one descriptor per connection),
# then exec the node so that it is PID 1 and receives SIGTERM itself.
#   CONTAINER_NOFILE  wanted soft limit (capped at the hard limit the runtime gives us;
#                    raise that with `ulimits: nofile` in compose or the pod's runtime)
set -e
want=${CONTAINER_NOFILE:-1048576}
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then
  ulimit -Sn "$want" 2>/dev/null || true
else
  ulimit -Sn "$hard" 2>/dev/null || true
fi
exec /usr/local/bin/roomcast "$@"
