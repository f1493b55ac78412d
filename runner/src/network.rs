//! The network grant (`wasm.shim.io/network`, docs/annotations.md) as the runner enforces it: joining the pod's
//! network namespace, and the socket-address check wasmtime asks before every socket use of the guest.
//!
//! Invariants:
//! - `join_network_namespace` runs while the process has one thread, so every thread made later (wasmtime's,
//!   tokio's) and every socket the guest opens lives in the pod's namespace; the node's is never used.
//! - No grant: no TCP, no UDP, and the default address check denies everything. `pod`: every address. Rules:
//!   exactly the uses listed (`allowed`), decided per address and port. Name lookup stays off in every case (the
//!   resolver would read the node's /etc/resolv.conf, not the pod's).

use std::ffi::CString;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::plan::{Grant, Rule, Verb};

impl Rule {
    fn matches(&self, addr: &SocketAddr) -> bool {
        let port = addr.port();
        if port < self.ports.0 || port > self.ports.1 {
            return false;
        }
        let Some(net) = self.ip else { return true };
        match (net, canonical_ip(addr.ip())) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u32::from(net) as u128,
                u32::from(ip) as u128,
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) reaches the IPv4 host: match it as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn prefix_match(net: u128, ip: u128, bits: u32, prefix: u8) -> bool {
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (net >> shift) == (ip >> shift)
}

/// Whether the rules allow `use` of `addr` (wasmtime asks before every bind, listen, accept, connect, send
/// and receive). Implicit binds (the OS picks the port for a connect or a first send) come as the wildcard
/// address with port 0 and are allowed when a connect or send rule exists; accepted clients are allowed
/// when a listen rule exists; datagrams are received from anyone when a bind rule exists, otherwise only
/// from the addresses a send rule names (the replies).
pub fn allowed(rules: &[Rule], addr: &SocketAddr, usage: SocketAddrUse) -> bool {
    let any = |verb: Verb| rules.iter().any(|r| r.verb == verb);
    let matching = |verb: Verb| rules.iter().any(|r| r.verb == verb && r.matches(addr));
    let implicit = addr.ip().is_unspecified() && addr.port() == 0;
    match usage {
        SocketAddrUse::TcpBind => matching(Verb::TcpListen) || (implicit && any(Verb::TcpConnect)),
        SocketAddrUse::TcpListen => matching(Verb::TcpListen),
        SocketAddrUse::TcpAccept => any(Verb::TcpListen),
        SocketAddrUse::TcpConnect => matching(Verb::TcpConnect),
        SocketAddrUse::UdpBind => matching(Verb::UdpBind) || (implicit && any(Verb::UdpSend)),
        SocketAddrUse::UdpSend => matching(Verb::UdpSend),
        SocketAddrUse::UdpReceive => any(Verb::UdpBind) || matching(Verb::UdpSend),
    }
}

/// The guest's sockets as far as `grant` goes (wasmtime's TCP/UDP switches and its socket-address check).
pub fn grant_sockets(wasi: &mut WasiCtxBuilder, grant: &Grant) {
    wasi.allow_ip_name_lookup(false);
    match grant {
        Grant::None => {
            wasi.allow_tcp(false).allow_udp(false); // and the default address check denies everything
        }
        Grant::Pod => {
            wasi.allow_tcp(true).allow_udp(true).inherit_network();
        }
        Grant::Rules { rules } => {
            let rules: Arc<[Rule]> = rules.clone().into();
            let tcp = rules
                .iter()
                .any(|r| matches!(r.verb, Verb::TcpListen | Verb::TcpConnect));
            let udp = rules
                .iter()
                .any(|r| matches!(r.verb, Verb::UdpBind | Verb::UdpSend));
            wasi.allow_tcp(tcp)
                .allow_udp(udp)
                .socket_addr_check(move |addr, usage| {
                    let ok = allowed(&rules, &addr, usage);
                    Box::pin(async move { ok })
                });
        }
    }
}

/// setns(2) into the pod's network namespace. Only valid while this process has one thread: threads made
/// later (wasmtime's, tokio's) inherit the namespace, threads made earlier would not.
pub fn join_network_namespace(path: &str) -> Result<(), String> {
    let threads = fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads != 1 {
        return Err(format!(
            "cannot join {path}: the runner already has {threads} threads"
        ));
    }
    let cpath = CString::new(path).map_err(|_| format!("network namespace {path:?}: bad path"))?;
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "network namespace {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(format!("cannot join network namespace {path}: {err}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Rule, Verb};

    fn rule(verb: Verb, ip: Option<&str>, prefix: u8, ports: (u16, u16)) -> Rule {
        Rule {
            verb,
            ip: ip.map(|s| s.parse().unwrap()),
            prefix,
            ports,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connect_rules_match_prefix_and_ports() {
        let rules = [rule(Verb::TcpConnect, Some("10.1.0.0"), 16, (5432, 5432))];
        assert!(allowed(
            &rules,
            &addr("10.1.2.3:5432"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            &rules,
            &addr("10.2.2.3:5432"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            &rules,
            &addr("10.1.2.3:5433"),
            SocketAddrUse::TcpConnect
        ));
        assert!(allowed(
            &rules,
            &addr("[::ffff:10.1.0.9]:5432"),
            SocketAddrUse::TcpConnect
        ));
        // connect's implicit bind, but no listening
        assert!(allowed(&rules, &addr("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(!allowed(
            &rules,
            &addr("0.0.0.0:8080"),
            SocketAddrUse::TcpBind
        ));
        assert!(!allowed(
            &rules,
            &addr("0.0.0.0:0"),
            SocketAddrUse::TcpListen
        ));
        assert!(!allowed(
            &rules,
            &addr("10.1.2.3:53"),
            SocketAddrUse::UdpSend
        ));
    }

    #[test]
    fn listen_rules_allow_bind_listen_and_accept() {
        let rules = [rule(Verb::TcpListen, None, 0, (8080, 8080))];
        assert!(allowed(
            &rules,
            &addr("0.0.0.0:8080"),
            SocketAddrUse::TcpBind
        ));
        assert!(allowed(
            &rules,
            &addr("[::]:8080"),
            SocketAddrUse::TcpListen
        ));
        assert!(allowed(
            &rules,
            &addr("192.0.2.1:40000"),
            SocketAddrUse::TcpAccept
        ));
        assert!(!allowed(
            &rules,
            &addr("0.0.0.0:8081"),
            SocketAddrUse::TcpBind
        ));
        assert!(!allowed(
            &rules,
            &addr("192.0.2.1:80"),
            SocketAddrUse::TcpConnect
        ));
    }

    #[test]
    fn udp_send_allows_replies_only_from_its_targets() {
        let rules = [rule(Verb::UdpSend, Some("fd00::"), 8, (53, 53))];
        assert!(allowed(
            &rules,
            &addr("[fd12::1]:53"),
            SocketAddrUse::UdpSend
        ));
        assert!(allowed(
            &rules,
            &addr("[fd12::1]:53"),
            SocketAddrUse::UdpReceive
        ));
        assert!(!allowed(
            &rules,
            &addr("[fe80::1]:53"),
            SocketAddrUse::UdpReceive
        ));
        assert!(!allowed(
            &rules,
            &addr("10.0.0.1:53"),
            SocketAddrUse::UdpSend
        ));
        assert!(allowed(&rules, &addr("[::]:0"), SocketAddrUse::UdpBind));
    }

    #[test]
    fn no_rules_allow_nothing() {
        for usage in [
            SocketAddrUse::TcpBind,
            SocketAddrUse::TcpConnect,
            SocketAddrUse::UdpBind,
            SocketAddrUse::UdpSend,
        ] {
            assert!(!allowed(&[], &addr("127.0.0.1:80"), usage));
        }
    }
}
