#!/usr/bin/env bash
# Assembles the nested test host ("L1"): a QEMU microvm, run on QEMU's software CPU
# with nested SVM, whose Debian stock kernel loads kvm-amd and so offers a genuine
# /dev/kvm to Mica's VMM inside it. See tests/nested/README.md.
# Output, in ~/.cache/mica/nested/<key>/:
#   vmlinux      Debian's linux-image-amd64, decompressed to the ELF QEMU boots directly
#   initramfs    busybox, the modules needed to mount 9p, and tests/nested/init
#   modules/     that kernel's whole module tree (bind-mounted at /lib/modules in L1)
# L1's userland is this machine's own root filesystem, shared read-only over
# virtio-9p with a tmpfs overlay, so every host tool and every build of Mica's
# binaries is there without packaging anything.
#   tests/nested/build.sh              build if needed, print the directory
#   tests/nested/build.sh --print-dir  print the directory only
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${MICA_CACHE:-$HOME/.cache/mica}
busybox=/bin/busybox
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
version=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$pkg" ] || [ -z "$version" ]; then
    echo "nested: cannot resolve linux-image-amd64 (run apt-get update / make setup)" >&2
    exit 1
fi
key=$( { cat "$here/build.sh" "$here/init"; echo "$pkg $version $(dpkg-query -W -f='${Version}' busybox-static)"; } | sha256sum | cut -c1-16)
out="$cache/nested/$key"

if [ "${1:-}" = "--print-dir" ]; then echo "$out"; exit 0; fi
if [ -f "$out/vmlinux" ] && [ -f "$out/initramfs" ] && [ -d "$out/modules" ]; then
    echo "nested: up to date ($out)" >&2
    echo "$out"
    exit 0
fi

mkdir -p "$cache/nested" "$cache/debs"
work=$(mktemp -d "$cache/nested/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "nested: host kernel $pkg $version" >&2
deb=$(ls "$cache/debs/${pkg}_"*_amd64.deb 2>/dev/null | grep -F "$(echo "$version" | sed 's/:/%3a/')" | head -1 || true)
if [ -z "$deb" ]; then
    (cd "$cache/debs" && apt-get download "$pkg=$version" >&2 2>/dev/null)
    deb=$(ls "$cache/debs/${pkg}_"*_amd64.deb | head -1)
fi
dpkg-deb -x "$deb" "$work/pkg"
kver=${pkg#linux-image-}

# vmlinuz -> vmlinux: find the compressed payload by its magic and unpack it
python3 - "$work/pkg/boot/vmlinuz-$kver" "$work/vmlinux" <<'PY'
import lzma, gzip, sys, zlib
data = open(sys.argv[1], "rb").read()
candidates = [(b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd")]
for magic, kind in candidates:
    start = data.find(magic)
    while start != -1:
        try:
            if kind == "xz":
                out = lzma.LZMADecompressor().decompress(data[start:])
            elif kind == "gzip":
                out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[start:])
            else:
                import subprocess
                out = subprocess.run(["zstd", "-dc"], input=data[start:], capture_output=True).stdout
            if out[:4] == b"\x7fELF":
                open(sys.argv[2], "wb").write(out)
                sys.exit(0)
        except Exception:
            pass
        start = data.find(magic, start + 1)
sys.exit("no ELF payload found in " + sys.argv[1])
PY

mkdir -p "$work/out"
mv "$work/vmlinux" "$work/out/vmlinux"
mkdir -p "$work/modroot/lib/modules"
cp -a "$work/pkg/lib/modules/$kver" "$work/modroot/lib/modules/$kver"
depmod -b "$work/modroot" "$kver"

# initramfs: busybox + the modules to reach the 9p root
root="$work/initramfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,lib/modules,newroot,hostroot,job,lower,upper}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cp "$here/init" "$root/init"
chmod +x "$root/init"
mknod -m 600 "$root/dev/console" c 5 1
mkdir -p "$root/boot-modules"
: >"$root/boot-modules/order"
for m in virtio_mmio 9pnet_virtio 9p overlay; do
    modprobe -d "$work/modroot" -S "$kver" --show-depends "$m"
done | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$root/boot-modules/"
    basename "$ko" >>"$root/boot-modules/order"
done
echo "$kver" >"$root/kernel-release"
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) >"$work/out/initramfs"
echo "$pkg $version" >"$work/out/VERSION"
mv "$work/modroot/lib/modules" "$work/out/modules"

rm -rf "$out"
mv "$work/out" "$out"
echo "nested: done" >&2
echo "$out"
