#!/bin/bash
# Docker HEALTHCHECK without curl in the image: GET PATH (default /healthz) on the
# node's own port (taken from ROOMCAST_LISTEN) through bash's /dev/tcp; healthy on 200.
path=${1:-/healthz}
port=${ROOMCAST_LISTEN##*:}
port=${port:-8080}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
read -r -t 3 _ status _ <&3 || exit 1
[ "$status" = 200 ]
