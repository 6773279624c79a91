#!/bin/bash
# Container HEALTHCHECK for wetrials-gateway: GET /healthz on the admin listener, healthy only on
# an HTTP 200 status line. Uses bash's /dev/tcp so the runtime image needs no curl or wget.
#
# Environment:
#   GATEWAY_ADMIN_HOST  default 127.0.0.1
#   GATEWAY_ADMIN_PORT  default 9091 (match [admin] listen in gateway.toml)
#   GATEWAY_HEALTH_PATH default /healthz
# Exit status: 0 healthy, 1 unhealthy (Docker's HEALTHCHECK convention).
set -u

host="${GATEWAY_ADMIN_HOST:-127.0.0.1}"
port="${GATEWAY_ADMIN_PORT:-9091}"
path="${GATEWAY_HEALTH_PATH:-/healthz}"

# Connect; a refused connection fails the redirection (bash prints why, which Docker keeps in
# the health log) and so the check.
exec 3<>"/dev/tcp/${host}/${port}" || exit 1
# The admin listener answers only a Host naming it: ip:port (IPv6 in brackets).
authority="${host}:${port}"
case "$host" in *:*) authority="[${host}]:${port}" ;; esac
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: docker-healthcheck\r\nConnection: close\r\n\r\n' \
    "$path" "$authority" >&3 || exit 1
# Only the status line matters; bound the wait so a stuck listener cannot hang the check
# (Docker's --timeout is the outer bound).
IFS= read -r -t 2 status_line <&3 || exit 1
exec 3<&- 3>&-
status_line="${status_line%$'\r'}"

case "$status_line" in
    "HTTP/1."?" 200"|"HTTP/1."?" 200 "*) exit 0 ;;
    *) exit 1 ;;
esac
