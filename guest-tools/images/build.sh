#!/usr/bin/env bash
# Builds Mica's guest images into ~/.cache/mica/images/<key>/:
#   tiny.ext4        busybox root filesystem for a virtio-blk root disk (root=/dev/vda)
#   tiny.initramfs   the same root filesystem as a gzip'd cpio (runs /init)
#   stock/vmlinuz    Debian's linux-image-cloud-amd64 kernel (a bzImage)
#   stock/initramfs  busybox + that kernel's virtio modules; switches to /dev/vda if given
# <key> hashes this folder and the package versions used, so images are rebuilt
# only when an input changes.
#   guest-tools/images/build.sh              build if needed, print the directory
#   guest-tools/images/build.sh --print-dir  print the directory only
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${MICA_CACHE:-$HOME/.cache/mica}
busybox=/bin/busybox
stock_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
stock_version=$(apt-cache policy "$stock_pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
bb_version=$(dpkg-query -W -f='${Version}' busybox-static)
if [ -z "$stock_pkg" ] || [ -z "$stock_version" ]; then
    echo "images: cannot resolve linux-image-cloud-amd64 (run apt-get update / make setup)" >&2
    exit 1
fi
key=$( { find "$here" -type f | sort | xargs sha256sum | awk '{print $1}'; echo "$bb_version $stock_pkg $stock_version"; } | sha256sum | cut -c1-16)
out="$cache/images/$key"

if [ "${1:-}" = "--print-dir" ]; then echo "$out"; exit 0; fi
if [ -f "$out/tiny.ext4" ] && [ -f "$out/tiny.initramfs" ] && [ -f "$out/stock/initramfs" ]; then
    echo "images: up to date ($out)" >&2
    echo "$out"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "images: must run as root (device nodes in the images)" >&2
    exit 1
fi

mkdir -p "$cache/images"
work=$(mktemp -d "$cache/images/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out/stock"

# --- tiny ---------------------------------------------------------------------
echo "images: tiny root filesystem (busybox $bb_version)" >&2
root="$work/tiny"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,mnt,var/log,lib}
cp -a "$here/tiny/etc/." "$root/etc/"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
ln -sf /bin/busybox "$root/init"
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
chmod 1777 "$root/tmp"
chmod 700 "$root/root"

(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 >"$work/out/tiny.initramfs"
# 64 MiB with room for the tests' writes; label "mica-root"
mke2fs -q -t ext4 -L mica-root -d "$root" "$work/out/tiny.ext4" 64M >&2

# --- stock kernel -----------------------------------------------------------
echo "images: stock kernel path ($stock_pkg $stock_version)" >&2
debs="$cache/debs"
mkdir -p "$debs"
deb=$(ls "$debs/${stock_pkg}_"*"$stock_version"*_amd64.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
    (cd "$debs" && apt-get download "$stock_pkg=$stock_version" >&2 2>/dev/null)
    deb=$(ls "$debs/${stock_pkg}_"*_amd64.deb | head -1)
fi
pkgroot="$work/pkg"
dpkg-deb -x "$deb" "$pkgroot"
kver=${stock_pkg#linux-image-}
cp "$pkgroot/boot/vmlinuz-$kver" "$work/out/stock/vmlinuz"
cp "$pkgroot/boot/config-$kver" "$work/out/stock/config"
depmod -b "$pkgroot" "$kver"

sroot="$work/stock"
mkdir -p "$sroot"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,lib/modules,newroot}
cp "$busybox" "$sroot/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$sroot/$applet" ] || ln -s /bin/busybox "$sroot/$applet"
done
cp "$here/stock/init" "$sroot/init"
mknod -m 600 "$sroot/dev/console" c 5 1
: >"$sroot/lib/modules/load-order"
for m in virtio_mmio virtio_blk virtio_net virtio_rng virtio_console vmw_vsock_virtio_transport button evdev; do
    modprobe -d "$pkgroot" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
    name=$(basename "$ko")
    cp "$ko" "$sroot/lib/modules/$name"
    echo "$name" >>"$sroot/lib/modules/load-order"
done
(cd "$sroot" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 >"$work/out/stock/initramfs"
echo "$stock_pkg $stock_version" >"$work/out/stock/VERSION"

rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$work/out" "$out"
echo "images: done" >&2
echo "$out"
