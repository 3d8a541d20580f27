#!/usr/bin/env bash
# Installs the Debian packages Mica's build, tests and all-in-one cloud need.
# Idempotent: asks apt only for what is missing.
set -euo pipefail

packages=(
    # Rust crates that build C, the guest kernel build
    build-essential bc bison flex libelf-dev libssl-dev dwarves pkg-config
    # guest kernel sources
    linux-source-6.1
    # guest images
    busybox-static e2fsprogs cpio zstd xz-utils kmod
    # the nested test host (real KVM under QEMU's software CPU)
    qemu-system-x86
    # the compute agent converts qcow2 images to raw
    qemu-utils
    # compute host networking
    iproute2 nftables dnsmasq-base iperf3 socat
    # production control plane
    postgresql rabbitmq-server
    # the openstack CLI for tests
    python3-venv
    # the console tests: node for playwright-core (tests/setup/web.sh), a
    # headless browser, and OCR of VNC screenshots and a guest's screen
    nodejs chromium tesseract-ocr
    # fetching packages and artifacts
    curl ca-certificates
)

# npm comes with some builds of nodejs (NodeSource's, which conflicts with
# Debian's npm package); ask for Debian's only when there is none.
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [ "${status:0:2}" = "ii" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "packages: all ${#packages[@]} present"
    exit 0
fi

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "packages: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
