//! What the test machine gives: free ports and a process's memory.

/// The process's peak resident set size (`VmHWM`) in KiB. Panics when it
/// cannot be measured: a memory bound checked against nothing proves
/// nothing.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot measure walhook's memory: reading {path}: {e}"));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap_or_else(|| panic!("cannot measure walhook's memory: no VmHWM in {path}"));
    let kib = line
        .trim()
        .strip_suffix("kB")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot measure walhook's memory: VmHWM {line:?} in {path}"));
    assert!(
        kib > 0,
        "cannot measure walhook's memory: VmHWM is 0 in {path}"
    );
    kib
}

/// The text of the daemon's `/metrics` on loopback `port`.
pub async fn metrics_text(port: u16) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
