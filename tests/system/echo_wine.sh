#!/usr/bin/env bash
# Runs the Windows echo server (iocp backend) under wine and loads it over
# loopback with the native Linux echo client, which checks every echoed
# byte.  Usage: echo_wine.sh SERVER.exe ECHO_CLIENT
set -euo pipefail
server=$1 client=$2
log=$(mktemp)
pid=
cleanup() {
  if [[ -n $pid ]]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap cleanup EXIT

WINEDEBUG=${WINEDEBUG:--all} wine "$server" --host 127.0.0.1 --port 0 \
  >"$log" 2>&1 </dev/null &
pid=$!
port=
for _ in $(seq 1 300); do # up to 30 s: the first wine start is slow
  port=$(tr -d '\r' <"$log" | sed -n 's/^listening on .*:\([0-9]*\)$/\1/p')
  [[ -n $port ]] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $port ]]; then
  echo "echo_server.exe did not start:" >&2
  cat "$log" >&2
  exit 1
fi
tr -d '\r' <"$log"
out=$("$client" --host 127.0.0.1 --port "$port" --conns 20 --size 1024 \
  --seconds 2)
echo "$out"
line=$(grep '^conns=' <<<"$out")
field() { sed -n "s|.* $1=\([^ ]*\).*|\1|p" <<<" $line"; }
if [[ $(field errors) != 0 || $(field mismatches) != 0 ||
  $(field requests) -lt 100 ]]; then
  echo "FAIL: the Windows echo server did not echo byte-exact" >&2
  exit 1
fi
echo "OK: $(field requests) echoes byte-exact through the iocp backend"
