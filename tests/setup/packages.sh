#!/usr/bin/env bash
# Installs the Debian packages Mica's build, tests and all-in-one cloud need, then
# verifies that every command and file they provide is really there and works.
#
# One table (below) is both the install list and the check: each row names a
# package, the oldest version Mica accepts (or -) and what must exist afterwards
# (a command on PATH, or an absolute path).
#
#   tests/setup/packages.sh           install what is missing or too old, verify, repair
#   tests/setup/packages.sh --check   verify only; exit 1 naming each missing package
#   tests/setup/packages.sh --table   print the table (package, minimum, provides)
#
# Whenever anything is missing or too old, apt is asked for the WHOLE set in one
# transaction, so it resolves conflicts across all of it and can never remove one
# package of the set to install another (that is how qemu-system-x86 from bookworm
# once removed a newer qemu-utils). After installing, the check runs; whatever a
# step removed is installed again (one repair), and the check must then pass.
#
# Test seams (tests/tests/setup.rs): MICA_SETUP_APT replaces apt-get,
# MICA_SETUP_DPKG_QUERY replaces dpkg-query, MICA_SETUP_ROOT prefixes the
# absolute paths checked, MICA_SETUP_NO_BACKPORTS=1 skips the apt source set-up.
set -euo pipefail

# package        minimum version     provides (commands on PATH, or /absolute/paths)
table='
build-essential  -                   gcc make
bc               -                   bc
bison            -                   bison
flex             -                   flex
libelf-dev       -                   /usr/include/libelf.h
libssl-dev       -                   /usr/include/openssl/ssl.h
dwarves          -                   pahole
pkg-config       -                   pkg-config
linux-source-6.1 -                   /usr/src/linux-source-6.1.tar.xz
busybox-static   -                   /bin/busybox
e2fsprogs        -                   mkfs.ext4 mke2fs debugfs
dosfstools       -                   mkfs.vfat
util-linux       -                   mkswap
cpio             -                   cpio
zstd             -                   zstd
xz-utils         -                   xz
kmod             -                   modprobe
qemu-system-x86  1:10.0              qemu-system-x86_64
qemu-utils       1:10.0              qemu-img qemu-nbd
iproute2         -                   ip
nftables         -                   nft
dnsmasq-base     -                   dnsmasq
iperf3           -                   iperf3
socat            -                   socat
openssh-client   -                   ssh-keygen ssh
openssl          -                   openssl
postgresql       -                   psql pg_lsclusters pg_ctlcluster
rabbitmq-server  -                   rabbitmqctl
python3-venv     -                   python3
nodejs           -                   node
chromium         -                   chromium
tesseract-ocr    -                   tesseract
curl             -                   curl
ca-certificates  -                   /etc/ssl/certs/ca-certificates.crt
'
# Why each is here: the Rust crates that build C and the guest kernel build
# (build-essential … pkg-config, linux-source-6.1); the guest images (busybox,
# e2fsprogs, cpio, zstd, xz, kmod); the agent's ephemeral and swap disks
# (e2fsprogs, dosfstools, util-linux); the nested test host (qemu-system-x86 10,
# the version the nested host is measured on: tests/nested/README.md); the
# agent's image conversion (qemu-utils, the same version as qemu-system-x86, or
# apt removes one for the other); compute host networking (iproute2 … socat);
# the key pair tests (openssh-client, openssl); the production control plane
# (postgresql, rabbitmq-server); the openstack CLI for tests (python3-venv); the
# console tests (nodejs for playwright-core, chromium, tesseract-ocr); fetching
# (curl, ca-certificates). mica up and mica-agent check the programs they run
# at start-up themselves (agent/src/programs.rs).

apt=${MICA_SETUP_APT:-apt-get}
dpkg_query=${MICA_SETUP_DPKG_QUERY:-dpkg-query}
root=${MICA_SETUP_ROOT:-}
sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo

rows() { sed -e '/^[[:space:]]*$/d' <<<"$table"; }

# npm comes with some builds of nodejs (NodeSource's, which conflicts with
# Debian's npm package); Debian's npm is asked for only when there is none.
if ! command -v npm >/dev/null 2>&1; then
    table+=$'\nnpm              -                   npm\n'
fi

installed_version() {
    local status
    local status version
    read -r status version < <("$dpkg_query" -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true)
    [ "${status:-}" = "ii" ] && echo "$version" || true
}

# A provided thing works: a path exists (under MICA_SETUP_ROOT), a command is on
# PATH and runs (so a dangling link or a binary whose libraries were removed fails).
present() {
    local what=$1
    if [ "${what:0:1}" = / ]; then
        [ -e "$root$what" ]
        return
    fi
    local path
    path=$(command -v "$what" 2>/dev/null) || return 1
    [ -x "$path" ] || return 1
    # The programs Mica runs: run them once, so a binary whose libraries a
    # conflicting install removed fails here rather than in a test.
    local probe=
    case "$what" in
    qemu-img | qemu-nbd | qemu-system-x86_64 | node | iperf3 | tesseract | nft | dnsmasq) probe=--version ;;
    socat) probe=-V ;;
    openssl) probe=version ;;
    esac
    [ -z "$probe" ] || timeout 20 "$path" "$probe" >/dev/null 2>&1
}

# Prints one line per package that fails: "package|reason". Exit 0 when all pass.
check() {
    local failed=0 pkg min provides have what
    while read -r pkg min provides; do
        have=$(installed_version "$pkg")
        if [ -z "$have" ]; then
            echo "$pkg|not installed"
            failed=1
            continue
        fi
        if [ "$min" != - ] && ! dpkg --compare-versions "$have" ge "$min"; then
            echo "$pkg|version $have is older than the $min Mica needs"
            failed=1
            continue
        fi
        for what in $provides; do
            if ! present "$what"; then
                echo "$pkg|installed ($have) but $what is missing or does not run"
                failed=1
                break
            fi
        done
    done < <(rows)
    return $failed
}

report() {
    local pkg reason
    while IFS='|' read -r pkg reason; do
        echo "packages: $pkg: $reason (fix: apt-get install $pkg, or run make setup)" >&2
    done <<<"$1"
}

all_packages() { rows | awk '{print $1}'; }

# Debian 12's own QEMU is 7.2; the nested test host is measured on 10.x, which
# bookworm-backports carries. The source is added once, and an apt pin takes only
# QEMU (and its firmware) from it; everything else stays on bookworm.
setup_sources() {
    [ "${MICA_SETUP_NO_BACKPORTS:-}" = 1 ] && return
    local codename
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    [ "$codename" = bookworm ] || return 0
    local list=/etc/apt/sources.list.d/mica-bookworm-backports.list
    local pin=/etc/apt/preferences.d/mica-qemu-backports
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "packages: adding Debian's bookworm-backports (for QEMU 10) as $list"
        echo "deb http://deb.debian.org/debian bookworm-backports main" | $sudo tee "$list" >/dev/null
    fi
    $sudo tee "$pin" >/dev/null <<'PIN'
# Written by Mica's tests/setup/packages.sh: QEMU 10 from bookworm-backports.
Package: qemu-system-x86 qemu-system-common qemu-system-data qemu-utils qemu-block-extra qemu-system-gui qemu-system-modules-opengl qemu-system-modules-spice seabios
Pin: release n=bookworm-backports
Pin-Priority: 990
PIN
}

install_all() {
    local all
    all=$(all_packages | tr '\n' ' ')
    echo "packages: installing what fails the check ($1) with apt-get, in one transaction with the whole set"
    $sudo "$apt" update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo "$apt" install -y -q --no-install-recommends $all
}

if [ "${1:-}" = --table ]; then
    rows
    exit 0
fi
if [ "${1:-}" = --check ]; then
    if failures=$(check); then
        echo "packages: all $(rows | wc -l) packages present and working"
        exit 0
    fi
    report "$failures"
    exit 1
fi

if failures=$(check); then
    echo "packages: all $(rows | wc -l) packages present and working"
    exit 0
fi
setup_sources
install_all "$(echo "$failures" | cut -d'|' -f1 | tr '\n' ' ')"
if failures=$(check); then
    echo "packages: installed and verified"
    exit 0
fi
# Something the transaction was asked for is gone or broken anyway (a package's
# maintainer script, or a conflict apt resolved by removing one): once more, the
# failing packages reinstalled explicitly, in the same transaction as the rest.
echo "packages: after installing, these still fail; repairing:" >&2
report "$failures"
broken=$(echo "$failures" | cut -d'|' -f1 | tr '\n' ' ')
install_all "$broken"
# apt-get install leaves an installed package alone even if its files are gone.
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo "$apt" install -y -q --no-install-recommends --reinstall $broken
if failures=$(check); then
    echo "packages: repaired and verified"
    exit 0
fi
report "$failures"
echo "packages: setup could not install everything Mica needs (see above)" >&2
exit 1
