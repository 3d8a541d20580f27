#!/usr/bin/env bash
# Installs the browser-side pieces of the console tests, pinned, outside the
# repository (in ${MICA_CACHE:-~/.cache/mica}):
#   novnc/  the noVNC library, npm package @novnc/novnc (core/ and vendor/),
#           which Mica's console proxy serves next to its own console page
#           ([console] novnc_dir);
#   node/   npm package playwright-core, which drives Debian's chromium in
#           the browser tests.
# Idempotent: a version stamp per piece; a partial install is redone.
set -euo pipefail
NOVNC_VERSION=1.7.0
PLAYWRIGHT_VERSION=1.65.1

cache=${MICA_CACHE:-$HOME/.cache/mica}
mkdir -p "$cache"
# npm prints a warning for an unrelated user setting on some machines.
npm() { command npm --no-update-notifier --no-fund --no-audit "$@" 2> >(grep -v 'Unknown user config' >&2); }

# --- noVNC ------------------------------------------------------------------
novnc="$cache/novnc"
if [ "$(cat "$novnc/.mica-version" 2>/dev/null)" = "$NOVNC_VERSION" ] && [ -f "$novnc/core/rfb.js" ]; then
    echo "web: noVNC $NOVNC_VERSION present ($novnc)"
else
    echo "web: installing noVNC $NOVNC_VERSION into $novnc"
    stage=$(mktemp -d "$cache/novnc.tmp.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    # `npm pack` checks the tarball against the registry's integrity hash.
    (cd "$stage" && npm pack --silent "@novnc/novnc@$NOVNC_VERSION" >/dev/null)
    tar -xzf "$stage"/novnc-novnc-"$NOVNC_VERSION".tgz -C "$stage"
    [ -f "$stage/package/core/rfb.js" ] || { echo "web: the noVNC package has no core/rfb.js" >&2; exit 1; }
    echo "$NOVNC_VERSION" >"$stage/package/.mica-version"
    rm -rf "$novnc.old"
    [ ! -e "$novnc" ] || mv "$novnc" "$novnc.old"
    mv "$stage/package" "$novnc"
    rm -rf "$novnc.old" "$stage"
    trap - EXIT
fi

# --- playwright-core ----------------------------------------------------------
node_dir="$cache/node"
have=$(node -p "require('$node_dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$have" = "$PLAYWRIGHT_VERSION" ]; then
    echo "web: playwright-core $PLAYWRIGHT_VERSION present ($node_dir)"
else
    echo "web: installing playwright-core $PLAYWRIGHT_VERSION into $node_dir"
    mkdir -p "$node_dir"
    [ -f "$node_dir/package.json" ] || echo '{"name": "mica-test-browser", "private": true}' >"$node_dir/package.json"
    # Only the driver: the browser is Debian's chromium (no download).
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --silent --prefix "$node_dir" --save-exact "playwright-core@$PLAYWRIGHT_VERSION"
fi
command -v chromium >/dev/null || echo "web: chromium is missing (tests/setup/packages.sh installs it)" >&2
