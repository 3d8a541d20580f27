#!/usr/bin/env bash
# The main job of `make run`: `mica up` (the all-in-one cloud) in the
# foreground, a first server booted on it with the openstack CLI, and how to
# reach its console. Ctrl-C stops the servers, then Mica. Expects `make setup`
# done and the release binaries built (the Makefile does both).
set -euo pipefail
cd "$(dirname "$0")/../.."
state=${MICA_STATE_DIR:-$HOME/.local/share/mica}
cache=${MICA_CACHE:-$HOME/.cache/mica}
mkdir -p "$state"
openstack=$cache/venv/bin/openstack
log=$state/up.log

target/release/mica up --state-dir "$state" "$@" 2> >(tee -a "$log" >&2) > "$state/up.out" &
up=$!
# (SIGTERM: a background job of a script ignores SIGINT.)
stop() { kill -TERM "$up" 2>/dev/null || true; wait "$up" 2>/dev/null || true; }
trap stop INT TERM
for _ in $(seq 1 300); do
    grep -q "mica up: ready" "$state/up.out" 2>/dev/null && break
    kill -0 "$up" 2>/dev/null || { echo "quickstart: mica up ended; see $log" >&2; exit 1; }
    sleep 1
done
grep -q "mica up: ready" "$state/up.out" || { echo "quickstart: mica up not ready after 300 s" >&2; stop; exit 1; }
clouds=$(sed -n 's/.*OS_CLIENT_CONFIG_FILE=\([^ ]*\).*/\1/p' "$state/up.out" | head -1)
export OS_CLIENT_CONFIG_FILE=$clouds
cat "$state/up.out" | grep -v "mica up: ready"

os() { "$openstack" --os-cloud mica-demo "$@"; }
status=$(os server show demo -f value -c status 2>/dev/null || true)
case "$status" in
    "") echo "quickstart: openstack --os-cloud mica-demo server create --flavor m1.nano --image tiny --wait demo"
        os server create --flavor m1.nano --image tiny --wait demo -f value -c id -c status -c addresses ;;
    SHUTOFF) echo "quickstart: the server demo exists (SHUTOFF): starting it"
        os server start demo
        for _ in $(seq 1 120); do [ "$(os server show demo -f value -c status)" = ACTIVE ] && break; sleep 1; done ;;
    *) echo "quickstart: the server demo exists ($status)" ;;
esac
for _ in $(seq 1 60); do os console log show demo 2>/dev/null | grep -q "Mica tiny guest" && break; sleep 1; done
echo
echo "--- the console of demo (openstack --os-cloud mica-demo console log show demo) ---"
os console log show demo | grep -v '^\s*$' | tail -n 8
cat <<MSG

The server demo is $(os server show demo -f value -c status) ($(os server show demo -f value -c addresses)).
  export OS_CLIENT_CONFIG_FILE=$clouds
  $openstack --os-cloud mica-demo console log show demo     # its serial console log
  $openstack --os-cloud mica-demo console url show --serial demo   # an interactive serial console (WebSocket, token valid 10 min)
  $openstack --os-cloud mica-demo console url show --novnc demo    # its screen in a browser (noVNC)
  $openstack --os-cloud mica-demo server list
Mica runs in the foreground (log: $log); Ctrl-C stops the servers, then Mica.
MSG
wait "$up"
