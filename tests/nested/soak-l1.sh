#!/usr/bin/env bash
# One nested host's share of the soak (tests/nested/soak.sh), run inside L1:
# boots real guests ("L2") with mica-vmm, one after another, until MINUTES have
# passed, cycling through four workloads that each once went wrong here:
#   io        32 MiB written with fsync to the virtio-blk root disk, read back, powered off
#   reboot    the guest reboots itself (the VMM exits 3: a reset nobody requested)
#   cpu       a busy shell loop on 2 vCPUs, then powered off
#   randread  20000 random 4 KiB O_DIRECT reads of the disk (blkbench; sustained
#             small guest I/O once stalled L1 after ~13000 requests), powered off
# Each boot must end as expected within 180 s. Prints one line per boot and a
# summary line "soak: N boots, N failed, ...". Exit 1 if any boot failed.
#   soak-l1.sh MINUTES VMM KERNEL ROOTFS BLKBENCH [WORKLOADS]
# WORKLOADS: the ones to cycle through (default "io reboot cpu randread").
set -uo pipefail
minutes=$1 vmm=$2 kernel=$3 rootfs=$4 blkbench=$5
read -r -a workloads <<<"${6:-io reboot cpu randread}"
deadline=$(($(date +%s) + minutes * 60))
work=/tmp/soak
mkdir -p "$work"
# The guest's root disk, with blkbench (static) at /blkbench.
cp --sparse=always "$rootfs" "$work/base.ext4"
debugfs -w -R "write $blkbench blkbench" "$work/base.ext4" >/dev/null 2>&1
debugfs -R "stat blkbench" "$work/base.ext4" 2>/dev/null | grep -q "Size:" || { echo "soak: cannot put blkbench on the disk"; exit 1; }
b64() { printf '%s' "$1" | base64 -w0; }

boots=0 failed=0 total_ms=0
while [ "$(date +%s)" -lt "$deadline" ]; do
    boots=$((boots + 1))
    kind=${workloads[$(((boots - 1) % ${#workloads[@]}))]}
    case $kind in
    io) want=0
       run='dd if=/dev/urandom of=/soak bs=1M count=32 conv=fsync 2>/dev/null && sync && echo 3 >/proc/sys/vm/drop_caches && md5sum /soak >/dev/null && rm /soak && sync; poweroff -f' ;;
    reboot) want=3
       run='reboot -f' ;;
    cpu) want=0
       run='i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; poweroff -f' ;;
    randread) want=0
       run='chmod +x /blkbench; for n in 1 2 3 4 5; do /blkbench randread /dev/vda 64 direct || reboot -f; done; poweroff -f' ;;
    *) echo "soak: unknown workload $kind"; exit 2 ;;
    esac
    cp --sparse=always "$work/base.ext4" "$work/root.ext4"
    cat >"$work/vm.json" <<JSON
{"vcpus": 2, "memory_mib": 256, "kernel": "$kernel",
 "cmdline": "console=ttyS0 noxsave quiet panic=-1 root=/dev/vda rw mica.hostname=soak$boots mica.run=$(b64 "$run")",
 "disks": [{"id": "root", "path": "$work/root.ext4"}],
 "serial": {"log": "$work/serial.log"}}
JSON
    rm -f "$work/serial.log"
    start=$(date +%s%N)
    timeout -s KILL 180 "$vmm" --config "$work/vm.json" --api-sock "$work/api.sock" 2>"$work/vmm.err"
    rc=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    total_ms=$((total_ms + ms))
    if [ "$rc" -eq "$want" ]; then
        echo "soak: boot $boots $kind ok in ${ms} ms"
    else
        failed=$((failed + 1))
        echo "soak: boot $boots $kind FAILED: mica-vmm exit $rc (wanted $want; 137 = killed after 180 s) in ${ms} ms"
        echo "--- serial (last 30 lines) ---"; tail -n 30 "$work/serial.log" 2>/dev/null
        echo "--- vmm stderr (last 20 lines) ---"; tail -n 20 "$work/vmm.err"
        dmesg | tail -n 20 | sed 's/^/L1 dmesg: /'
    fi
    rm -f "$work/api.sock"
done
echo "soak: $boots boots, $failed failed, mean $((total_ms / (boots > 0 ? boots : 1))) ms a boot, L1 up $(cut -d' ' -f1 /proc/uptime) s"
dmesg | grep -Ei 'BUG|panic|stall|soft lockup|Oops|WARNING' | head -n 20 | sed 's/^/L1 dmesg: /'
[ "$failed" -eq 0 ]
