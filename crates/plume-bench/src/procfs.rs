//! What the benchmark reads from `/proc`: a process's resident memory, CPU time and open file
//! descriptors, its open file limit, the load average, and a description of the machine. The parsers are pure functions over the
//! file text; the readers are thin wrappers.

use std::fs;

use serde::{Deserialize, Serialize};

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`, 100 on every Linux platform the
/// benchmark runs on; the kernel ABI fixes it, whatever the kernel's internal `HZ`).
pub const USER_HZ: f64 = 100.0;

/// `VmRSS` from the text of `/proc/PID/status`, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status_field_kib(status, "VmRSS:")
}

/// `VmHWM` (peak resident set) from `/proc/PID/status`, in KiB.
pub fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    status_field_kib(status, "VmHWM:")
}

fn status_field_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// User plus system CPU time in clock ticks from the text of `/proc/PID/stat`. The command
/// name (field 2) may contain spaces and parentheses, so fields are counted after its last
/// `)`: utime and stime are fields 14 and 15 of the whole line.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // Fields 3.. of the line are 0.. here, so utime (14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The soft "Max open files" limit from the text of `/proc/PID/limits` (`None` when
/// unlimited or absent).
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The 1, 5 and 15 minute load averages from the text of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut words = text.split_whitespace();
    let mut next = || words.next()?.parse::<f64>().ok().filter(|v| v.is_finite());
    Some([next()?, next()?, next()?])
}

/// The machine's 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    parse_loadavg(&fs::read_to_string("/proc/loadavg").ok()?)
}

/// The warning for a machine too busy to measure on, if it is: a 1-minute load average above
/// half the CPUs means another process is already using about one core of two, and every
/// latency and CPU figure of the run shares the machine with it.
pub fn load_warning(load: [f64; 3], cpus: usize) -> Option<String> {
    let limit = cpus.max(1) as f64 / 2.0;
    (load[0] > limit).then(|| {
        format!(
            "the machine is loaded (load average {:.2} {:.2} {:.2} on {cpus} CPUs, above {limit}): \
             other work shares the cores, so the latencies and CPU figures are not those of a \
             quiet machine",
            load[0], load[1], load[2]
        )
    })
}

/// The number of open file descriptors of a process (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Option<u64> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.count() as u64)
}

/// A counter of `/proc/net/netstat` (`group` `TcpExt`, `name` `ListenOverflows`): a line of
/// names followed by a line of values for each group.
pub fn parse_netstat_field(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().skip(1).position(|n| n == name)?;
    values.split_whitespace().skip(1).nth(at)?.parse().ok()
}

/// How often, machine-wide, a completed TCP handshake was dropped because a listener's
/// accept queue was full (`TcpExt ListenOverflows`).
pub fn listen_overflows() -> Option<u64> {
    parse_netstat_field(
        &fs::read_to_string("/proc/net/netstat").ok()?,
        "TcpExt",
        "ListenOverflows",
    )
}

/// TCP sockets of one local port, by the states that hold a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSockets {
    /// `ESTABLISHED` (accepted or waiting in the accept queue).
    pub established: u64,
    /// `SYN_RECV` (a handshake not yet completed).
    pub syn_recv: u64,
}

/// Counts the sockets whose local port is `port` in the text of `/proc/net/tcp` (or
/// `tcp6`): field 2 is `ADDR:PORT` in hex, field 4 the state (`01` established, `03`
/// SYN_RECV).
pub fn parse_port_sockets(text: &str, port: u16, into: &mut PortSockets) {
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(state)) = (fields.nth(1), fields.nth(1)) else {
            continue;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if local_port != Some(port) {
            continue;
        }
        match state {
            "01" => into.established += 1,
            "03" => into.syn_recv += 1,
            _ => {}
        }
    }
}

/// The kernel's view of a listening port: every connection it holds for it, accepted by the
/// process or not.
pub fn port_sockets(port: u16) -> Option<PortSockets> {
    let mut counts = PortSockets::default();
    let mut any = false;
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(path) {
            parse_port_sockets(&text, port, &mut counts);
            any = true;
        }
    }
    any.then_some(counts)
}

/// The resident set of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_vm_rss_kib(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The peak resident set of a process in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    parse_vm_hwm_kib(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The CPU time (user + system) a process has used, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let ticks = parse_cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    Some(ticks as f64 / USER_HZ)
}

/// The soft open-file limit of a process.
pub fn max_open_files(pid: u32) -> Option<u64> {
    parse_max_open_files(&fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

/// Raises this process's soft open-file limit to its hard limit; returns `(soft, hard)`.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    rlimit::increase_nofile_limit(u64::MAX)?;
    rlimit::Resource::NOFILE.get()
}

/// The machine a result was measured on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu_model: String,
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// Total memory, MiB.
    pub mem_total_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// `net.ipv4.ip_local_port_range`.
    pub ephemeral_ports: String,
    /// This process's open-file limit `(soft, hard)`.
    pub nofile: (u64, u64),
}

impl Machine {
    /// Reads the description of this machine.
    pub fn detect() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = status_field_kib(&meminfo, "MemTotal:").unwrap_or(0) / 1024;
        let read_trim = |path: &str| {
            fs::read_to_string(path)
                .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        Machine {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_mib,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            ephemeral_ports: read_trim("/proc/sys/net/ipv4/ip_local_port_range"),
            nofile: rlimit::Resource::NOFILE.get().unwrap_or((0, 0)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tplume\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  123456 kB\nVmHWM:\t   90000 kB\nVmRSS:\t   81234 kB\nThreads:\t3\n";

    #[test]
    fn status_fields() {
        assert_eq!(parse_vm_rss_kib(STATUS), Some(81_234));
        assert_eq!(parse_vm_hwm_kib(STATUS), Some(90_000));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn stat_cpu_ticks_skip_a_tricky_command_name() {
        let stat = "4242 (plume (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 3 0 12345 100000000 20000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn limits_open_files() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            20000                20000                files     \n";
        assert_eq!(parse_max_open_files(limits), Some(20_000));
        assert_eq!(
            parse_max_open_files("Max open files unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn loadavg_and_the_busy_machine_warning() {
        assert_eq!(
            parse_loadavg("0.52 1.07 2.00 3/412 9999\n"),
            Some([0.52, 1.07, 2.0])
        );
        assert_eq!(parse_loadavg("0.52 1.07"), None);
        assert_eq!(parse_loadavg("x y z"), None);
        assert_eq!(load_warning([0.9, 3.0, 3.0], 2), None);
        let w = load_warning([1.5, 0.2, 0.1], 2).unwrap();
        assert!(w.contains("1.50 0.20 0.10") && w.contains("2 CPUs"), "{w}");
        assert!(load_warning([0.1, 0.0, 0.0], 0).is_none());
    }

    #[test]
    fn netstat_and_port_sockets() {
        let netstat = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 639 640\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            parse_netstat_field(netstat, "TcpExt", "ListenOverflows"),
            Some(639)
        );
        assert_eq!(parse_netstat_field(netstat, "TcpExt", "Nope"), None);
        assert_eq!(parse_netstat_field(netstat, "MPTcpExt", "X"), None);
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 0100007F:8C89 00000000:0000 0A 00000000:00000000\n   1: 0100007F:8C89 0100007F:D2A4 01 00000000:00000000\n   2: 0100007F:8C89 0100007F:D2A5 03 00000000:00000000\n   3: 0100007F:D2A6 0100007F:8C89 01 00000000:00000000\n   4: 0100007F:8C89 0100007F:D2A7 06 00000000:00000000\n";
        let mut counts = PortSockets::default();
        parse_port_sockets(tcp, 0x8C89, &mut counts);
        // The client end (local port D2A6) and TIME_WAIT do not count; LISTEN neither.
        assert_eq!(
            counts,
            PortSockets {
                established: 1,
                syn_recv: 1
            }
        );
        assert!(port_sockets(1).is_some());
        assert!(listen_overflows().is_some());
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(open_fds(pid).unwrap() >= 3);
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_secs(pid).is_some());
        assert!(max_open_files(pid).unwrap() > 0);
        let m = Machine::detect();
        assert!(m.cpus >= 1);
    }
}
