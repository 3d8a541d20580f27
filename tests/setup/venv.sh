#!/usr/bin/env bash
# Creates the Python venv with the pinned OpenStack clients that the tests use as
# the real client: ~/.cache/mica/venv (outside the repository). Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MICA_CACHE:-$HOME/.cache/mica}
venv="$cache/venv"
req="$here/requirements.txt"
stamp="$venv/.mica-requirements.sha256"
want=$(cat "$req" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)

if [ -x "$venv/bin/openstack" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    echo "venv: up to date ($venv)"
    exit 0
fi
echo "venv: installing pinned clients into $venv"
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req" -c "$here/constraints.txt"
echo "$want" >"$stamp"
"$venv/bin/openstack" --version
