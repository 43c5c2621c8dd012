#!/bin/sh
# Entry point of the compose nginx service: render the template for the `gateway` service
# and run nginx in the foreground as PID 1 (`docker compose kill -s HUP nginx` reloads it,
# which also re-resolves the upstream names when NGINX_RESOLVE=0).
set -eu
dir=${NGINX_RUN_DIR:-/tmp/roomcast-nginx}
mkdir -p "$dir/tmp"
export NGINX_PID_FILE="$dir/nginx.pid" NGINX_TEMP_DIR="$dir/tmp"
export NGINX_ERROR_LOG=${NGINX_ERROR_LOG:-stderr} NGINX_ACCESS_LOG=${NGINX_ACCESS_LOG:-/dev/stdout}
sh /etc/roomcast/nginx/render.sh /etc/roomcast/nginx/roomcast.conf.template >"$dir/nginx.conf"
nginx -t -q -c "$dir/nginx.conf" -e stderr
exec nginx -c "$dir/nginx.conf" -e stderr -g 'daemon off;'
