#!/usr/bin/env bash
# Soak of the nested test host: boots L1 (tests/nested/), runs guest after
# guest in it (tests/nested/soak-l1.sh: disk I/O, guest reboots, CPU, sustained
# small random reads) for up to
# 50 minutes, powers L1 off, and does it again until MINUTES have passed. Fails
# on the first L1 that panics, hangs or loses a guest; prints a summary line per
# L1 and a total. The figures in tests/nested/README.md come from here.
#   tests/nested/soak.sh [MINUTES]      (default 60; needs `make setup`)
# Env: SOAK_CPUS (L1's vCPUs; default the harness's, 1), SOAK_MEMORY (MiB, 2048), SOAK_WORKLOADS (the
# guests' workloads to cycle through, default "io reboot cpu randread").
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${1:-60}
export PATH="$HOME/.cargo/bin:$PATH"
cargo build -q -p mica-vmm -p mica-tests --bins
mkdir -p target/soak
cc -O2 -static -o target/soak/blkbench vmm/benches/blkbench.c
kernel="$(kernels/build.sh --print-dir)/vmlinux"
rootfs="$(guest-tools/images/build.sh --print-dir)/tiny.ext4"
for f in "$kernel" "$rootfs"; do
    [ -f "$f" ] || { echo "soak: $f is missing (run make setup)" >&2; exit 1; }
done
end=$(($(date +%s) + minutes * 60))
round=0 log=target/nested-logs/soak-$(date +%Y%m%d-%H%M%S).log
mkdir -p target/nested-logs
echo "soak: $minutes minutes, log in $log"
while [ "$(date +%s)" -lt "$end" ]; do
    round=$((round + 1))
    left=$(((end - $(date +%s) + 59) / 60))
    [ "$left" -gt 50 ] && left=50
    echo "soak: L1 #$round for $left minutes" | tee -a "$log"
    if ! target/debug/mica-nested run ${SOAK_CPUS:+--cpus "$SOAK_CPUS"} --memory "${SOAK_MEMORY:-2048}" -- \
        bash tests/nested/soak-l1.sh "$left" "$PWD/target/debug/mica-vmm" "$kernel" "$rootfs" "$PWD/target/soak/blkbench" "${SOAK_WORKLOADS:-io reboot cpu randread}" >>"$log" 2>&1; then
        grep -E '^soak: [0-9]+ boots|FAILED|mica-nested:' "$log" | tail -n 5
        echo "soak: L1 #$round failed; see $log and target/nested-logs/cli-*.log (L1's console)" >&2
        exit 1
    fi
    grep -E '^soak: [0-9]+ boots' "$log" | tail -n 1
done
echo "soak: passed, $round L1 boots, $(grep -c ' ok in ' "$log") guest boots, none lost"
