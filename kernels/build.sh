#!/usr/bin/env bash
# Builds Mica's guest kernel (vmlinux ELF + bzImage) from Debian's linux-source-6.1:
# `make tinyconfig`, then the fragment kernels/microvm.config on top.
# Output: ~/.cache/mica/kernels/<key>/{vmlinux,bzImage,config,SOURCE_VERSION,BUILD_SECONDS}
# where <key> hashes the fragment, the recipe version below and the source package
# version, so a rebuild happens only when one of them changes.
#   kernels/build.sh              build if needed, print the output directory
#   kernels/build.sh --print-dir  print the output directory only (no build)
set -euo pipefail

# The whole script is one function, so bash has read all of it before running any
# of it: editing this file during a build cannot derail that build.
main() {

    # Bump when the build steps below change what is built.
    recipe=1

    here=$(cd "$(dirname "$0")" && pwd)
    cache=${MICA_CACHE:-$HOME/.cache/mica}
    tarball=/usr/src/linux-source-6.1.tar.xz
    jobs=${MICA_JOBS:-$(nproc)}

    src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || true)
    if [ -z "$src_version" ] || [ ! -f "$tarball" ]; then
        echo "kernels/build.sh: linux-source-6.1 is not installed (run: make setup)" >&2
        exit 1
    fi
    key=$( { cat "$here/microvm.config"; echo "recipe=$recipe source=$src_version"; } | sha256sum | cut -c1-16)
    out="$cache/kernels/$key"

    if [ "${1:-}" = "--print-dir" ]; then echo "$out"; exit 0; fi

    if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && [ -f "$out/config" ]; then
        echo "kernel: up to date ($out)" >&2
        echo "$out"
        exit 0
    fi

    work="$cache/kernels/build-$key"
    rm -rf "$work"
    mkdir -p "$work"
    trap 'rm -rf "$work"' EXIT
    start=$(date +%s)
    echo "kernel: unpacking linux-source $src_version" >&2
    tar -C "$work" -xf "$tarball"
    tree="$work/linux-source-6.1"

    echo "kernel: configuring (tinyconfig + kernels/microvm.config)" >&2
    make -C "$tree" -s ARCH=x86_64 tinyconfig >/dev/null
    "$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "$here/microvm.config" >"$work/merge.log" 2>&1
    make -C "$tree" -s ARCH=x86_64 olddefconfig >/dev/null

    echo "kernel: compiling with $jobs jobs (about 6 minutes on 2 cores; log in $work/build.log)" >&2
    set +e
    make -C "$tree" ARCH=x86_64 -j"$jobs" vmlinux bzImage 2>&1 \
        | tee "$work/build.log" \
        | awk '/^  (CC|AS|LD|AR)/ { n++; if (n % 200 == 0) { printf "kernel: %d objects built\n", n > "/dev/stderr"; fflush() } }'
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        tail -30 "$work/build.log" >&2
        echo "kernel: build failed" >&2
        exit 1
    fi

    mkdir -p "$out.tmp"
    cp "$tree/vmlinux" "$out.tmp/vmlinux"
    cp "$tree/arch/x86/boot/bzImage" "$out.tmp/bzImage"
    cp "$tree/.config" "$out.tmp/config"
    echo "$src_version" >"$out.tmp/SOURCE_VERSION"
    echo $(( $(date +%s) - start )) >"$out.tmp/BUILD_SECONDS"
    rm -rf "$out"
    mv "$out.tmp" "$out"
    echo "kernel: built in $(cat "$out/BUILD_SECONDS") s" >&2
    echo "$out"
}

main "$@"
