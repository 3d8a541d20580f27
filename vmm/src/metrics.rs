//! Counters, updated lock-free by the vCPU and device threads and read by
//! `GET /metrics`. They live as long as the process, across reboots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mica_vmm_api as api;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct VcpuCounters {
    pub exits: Counter,
    pub io_exits: Counter,
    pub mmio_exits: Counter,
    pub unhandled_accesses: Counter,
    pub errors: Counter,
}

#[derive(Debug, Default)]
pub struct BlockCounters {
    pub read_ops: Counter,
    pub read_bytes: Counter,
    pub write_ops: Counter,
    pub write_bytes: Counter,
    pub flush_ops: Counter,
    pub errors: Counter,
}

#[derive(Debug, Default)]
pub struct NetCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    pub rx_dropped: Counter,
    pub errors: Counter,
}

#[derive(Debug, Default)]
pub struct RngCounters {
    pub requests: Counter,
    pub bytes: Counter,
    pub errors: Counter,
}

#[derive(Debug, Default)]
pub struct SerialCounters {
    pub out_bytes: Counter,
    pub in_bytes: Counter,
    pub errors: Counter,
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct DisplayCounters {
    pub clients_accepted: Counter,
    pub clients: Gauge,
    pub bytes_sent: Counter,
    pub updates_sent: Counter,
    pub protocol_errors: Counter,
}

/// All of the VMM's counters.
#[derive(Debug, Default)]
pub struct VmmMetrics {
    pub vcpu: VcpuCounters,
    pub rng: Arc<RngCounters>,
    pub serial: Arc<SerialCounters>,
    pub display: Arc<DisplayCounters>,
    block: Mutex<BTreeMap<String, Arc<BlockCounters>>>,
    net: Mutex<BTreeMap<String, Arc<NetCounters>>>,
}

impl VmmMetrics {
    /// The counters of disk `id` (the same ones after a reboot).
    pub fn block(&self, id: &str) -> Arc<BlockCounters> {
        crate::devices::lock(&self.block)
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// The counters of NIC `id`.
    pub fn net(&self, id: &str) -> Arc<NetCounters> {
        crate::devices::lock(&self.net)
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// A snapshot for the control socket.
    pub fn snapshot(&self) -> api::Metrics {
        let v = &self.vcpu;
        let vcpu = api::VcpuMetrics {
            exits: v.exits.get(),
            io_exits: v.io_exits.get(),
            mmio_exits: v.mmio_exits.get(),
            unhandled_accesses: v.unhandled_accesses.get(),
            errors: v.errors.get(),
        };
        let block: BTreeMap<String, api::BlockMetrics> = crate::devices::lock(&self.block)
            .iter()
            .map(|(id, b)| {
                (
                    id.clone(),
                    api::BlockMetrics {
                        read_ops: b.read_ops.get(),
                        read_bytes: b.read_bytes.get(),
                        write_ops: b.write_ops.get(),
                        write_bytes: b.write_bytes.get(),
                        flush_ops: b.flush_ops.get(),
                        errors: b.errors.get(),
                    },
                )
            })
            .collect();
        let net: BTreeMap<String, api::NetMetrics> = crate::devices::lock(&self.net)
            .iter()
            .map(|(id, n)| {
                (
                    id.clone(),
                    api::NetMetrics {
                        rx_packets: n.rx_packets.get(),
                        rx_bytes: n.rx_bytes.get(),
                        tx_packets: n.tx_packets.get(),
                        tx_bytes: n.tx_bytes.get(),
                        rx_dropped: n.rx_dropped.get(),
                        errors: n.errors.get(),
                    },
                )
            })
            .collect();
        let rng = api::RngMetrics {
            requests: self.rng.requests.get(),
            bytes: self.rng.bytes.get(),
            errors: self.rng.errors.get(),
        };
        let serial = api::SerialMetrics {
            out_bytes: self.serial.out_bytes.get(),
            in_bytes: self.serial.in_bytes.get(),
            errors: self.serial.errors.get(),
        };
        let d = &self.display;
        let display = api::DisplayMetrics {
            vnc_clients_accepted: d.clients_accepted.get(),
            vnc_clients: d.clients.get(),
            vnc_bytes_sent: d.bytes_sent.get(),
            vnc_updates_sent: d.updates_sent.get(),
            vnc_protocol_errors: d.protocol_errors.get(),
        };
        let errors = vcpu.errors
            + block.values().map(|b| b.errors).sum::<u64>()
            + net.values().map(|n| n.errors).sum::<u64>()
            + rng.errors
            + serial.errors;
        api::Metrics {
            vcpu,
            block,
            net,
            rng,
            serial,
            display,
            errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_per_id_and_errors_summed() {
        let m = VmmMetrics::default();
        m.block("root").errors.add(2);
        m.block("root").read_ops.inc();
        m.net("eth0").errors.inc();
        m.vcpu.errors.inc();
        let s = m.snapshot();
        assert_eq!(s.block["root"].read_ops, 1);
        assert_eq!(s.errors, 4);
    }
}
