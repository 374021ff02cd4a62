//! What `davit dev`, `davit server` and `davit agent` listen on, checked before they start: an address that
//! is taken (a second agent on one host, on the default ports) ends the process at once with the flag that
//! moves it, every taken address in one error, before anything is created or registered.
//!
//! The service proxy listens on one port per service (`local_port`) and per upstream, so its IP cannot be
//! probed like a port: the process claims it instead, with an abstract Unix socket named after it. Abstract
//! sockets live in the network namespace, as IP addresses do, and the kernel drops the claim when the process
//! ends, however it ends.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;

use crate::Failure;
use crate::cli::NodeArgs;

/// The addresses to check and what to say when one is taken.
#[derive(Default)]
pub struct Addresses {
    taken: Vec<String>,
    proxy_claim: Option<UnixListener>,
}

/// The claim on a service proxy IP: held as long as this value lives.
pub struct ProxyClaim {
    _socket: Option<UnixListener>,
}

impl Addresses {
    /// A TCP address (an HTTP API) that `flag` moves; `who` guesses what holds it.
    pub fn tcp(mut self, addr: SocketAddr, who: &str, flag: &str) -> Addresses {
        if addr.port() != 0 && tcp_in_use(addr) {
            self.taken.push(format!("{addr} is in use ({who}?): pass {flag} ADDR:PORT"));
        }
        self
    }

    /// The node's service DNS server (UDP and TCP) and proxy IP, unless `--no-service-proxy`.
    pub fn service_proxy(mut self, node: &NodeArgs) -> Addresses {
        if node.no_service_proxy {
            return self;
        }
        let dns = node.dns_bind;
        if dns.port() != 0 && (UdpSocket::bind(dns).is_err_and(|error| error.kind() == ErrorKind::AddrInUse) || tcp_in_use(dns)) {
            self.taken.push(format!("{dns} is in use (another agent's DNS server?): pass --dns-bind ADDR:PORT, or --no-service-proxy"));
        }
        let ip = node.proxy_bind_ip;
        match claim_proxy_ip(ip) {
            Ok(socket) => self.proxy_claim = Some(socket),
            Err(error) if error.kind() == ErrorKind::AddrInUse => self.taken.push(format!(
                "the service proxy IP {ip} is another agent's on this host: pass --proxy-bind-ip IP (any other loopback \
                 address, e.g. 127.0.0.2), or --no-service-proxy"
            )),
            // Not a reason to refuse a start.
            Err(error) => tracing::warn!(%ip, %error, "cannot claim the service proxy IP; a second agent on it would go unnoticed"),
        }
        self
    }

    /// Fails with every taken address, one per line; otherwise the proxy claim to hold while running.
    pub fn check(self) -> Result<ProxyClaim, Failure> {
        match self.taken.is_empty() {
            true => Ok(ProxyClaim { _socket: self.proxy_claim }),
            false => Err(Failure::user(self.taken.join("\n  "))),
        }
    }
}

/// Whether something listens on `addr`. The probe binds without listening, so a client that connects
/// meanwhile (a `job run` waiting for `davit dev`) is refused and tries again, rather than being accepted by
/// the probe and dropped. With `SO_REUSEADDR`, as tokio's listeners bind: a connection of an earlier process
/// still in TIME_WAIT does not count.
fn tcp_in_use(addr: SocketAddr) -> bool {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    socket
        .and_then(|socket| socket.set_reuseaddr(true).and_then(|()| socket.bind(addr)))
        .is_err_and(|error| error.kind() == ErrorKind::AddrInUse)
}

/// Claims `ip` for this process's service proxy (`AddrInUse`: another process holds it).
fn claim_proxy_ip(ip: IpAddr) -> std::io::Result<UnixListener> {
    let name = format!("davit-service-proxy-{ip}");
    UnixListener::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?)
}
