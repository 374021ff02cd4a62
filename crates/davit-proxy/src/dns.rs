//! A small authoritative DNS server for service discovery under `davit.`:
//!
//! - `<service>.service.davit.` A: one record per instance; SRV: `0 1 <port> <alloc-id>.alloc.davit.`
//!   with the alloc's A record in the additional section;
//! - `<alloc-id>.alloc.davit.` A.
//!
//! Unknown names under `davit.` get NXDOMAIN, every other zone REFUSED (there is no forwarding), messages
//! that do not parse FORMERR. UDP and TCP on the same port. Records are fed in through [`DnsServer`]'s
//! methods; the server never looks anything up itself.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::Error;

/// Largest TTL the server hands out: records change as allocations come and go.
pub const MAX_TTL: u32 = 5;

/// Where the DNS server listens and how long answers may be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP address (port 0 picks a free port, see [`DnsServer::local_addr`]).
    pub listen: SocketAddr,
    /// TTL of every record, clamped to `0..=MAX_TTL`.
    pub ttl: u32,
}

impl DnsConfig {
    pub fn new(listen: SocketAddr) -> DnsConfig {
        DnsConfig { listen, ttl: 0 }
    }
}

/// One instance of a service as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsInstance {
    pub(crate) ip: Ipv4Addr,
    pub(crate) port: u16,
    /// Allocation id; the SRV target is `<alloc_id>.alloc.davit.`.
    pub(crate) alloc_id: String,
}

/// The records the server answers from.
#[derive(Debug, Default)]
pub(crate) struct DnsRecords {
    services: HashMap<String, Vec<DnsInstance>>,
    allocs: HashMap<String, Ipv4Addr>,
}

/// Running DNS server; stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    records: Arc<RwLock<DnsRecords>>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `config.listen` and starts answering.
    pub async fn start(config: DnsConfig) -> Result<DnsServer, Error> {
        let ttl = config.ttl.min(MAX_TTL);
        let (udp, tcp) = bind(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| Error::DnsBind { addr: config.listen, source })?;
        let records = Arc::new(RwLock::new(DnsRecords::default()));
        let tasks = vec![tokio::spawn(serve_udp(udp, Arc::clone(&records), ttl)), tokio::spawn(serve_tcp(tcp, Arc::clone(&records), ttl))];
        Ok(DnsServer { records, local_addr, tasks })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the instances of `service` (`(ip, port, alloc id)` each); an empty list removes it.
    pub fn set_service(&self, service: &str, instances: Vec<(Ipv4Addr, u16, String)>) {
        let instances: Vec<DnsInstance> = instances.into_iter().map(|(ip, port, alloc_id)| DnsInstance { ip, port, alloc_id }).collect();
        let mut records = self.records.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if instances.is_empty() {
            records.services.remove(&service.to_ascii_lowercase());
        } else {
            records.services.insert(service.to_ascii_lowercase(), instances);
        }
    }

    /// Sets the address `<alloc_id>.alloc.davit.` resolves to.
    pub fn set_alloc(&self, alloc_id: &str, ip: Ipv4Addr) {
        self.records.write().unwrap_or_else(|poisoned| poisoned.into_inner()).allocs.insert(alloc_id.to_ascii_lowercase(), ip);
    }

    pub fn remove_alloc(&self, alloc_id: &str) {
        self.records.write().unwrap_or_else(|poisoned| poisoned.into_inner()).allocs.remove(&alloc_id.to_ascii_lowercase());
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    // With port 0 the UDP port may be taken for TCP; try a few ports before giving up.
    let mut last_error = None;
    for _ in 0..5 {
        let udp = UdpSocket::bind(listen).await.map_err(|source| Error::DnsBind { addr: listen, source })?;
        let addr = udp.local_addr().map_err(|source| Error::DnsBind { addr: listen, source })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if listen.port() == 0 => last_error = Some(source),
            Err(source) => return Err(Error::DnsBind { addr, source }),
        }
    }
    Err(Error::DnsBind { addr: listen, source: last_error.unwrap_or_else(|| std::io::Error::other("no free port")) })
}

async fn serve_udp(socket: UdpSocket, records: Arc<RwLock<DnsRecords>>, ttl: u32) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let (length, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "dns udp receive failed");
                continue;
            }
        };
        let answer = {
            let records = records.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            answer(&records, ttl, &buffer[..length], Transport::Udp)
        };
        if let Some(answer) = answer
            && let Err(error) = socket.send_to(&answer, peer).await
        {
            tracing::debug!(%error, %peer, "dns udp send failed");
        }
    }
}

/// TCP connections served at once; more are closed as they arrive.
const MAX_TCP_CONNECTIONS: usize = 256;

async fn serve_tcp(listener: TcpListener, records: Arc<RwLock<DnsRecords>>, ttl: u32) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let records = Arc::clone(&records);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), serve_tcp_connection(stream, records, ttl)).await;
            drop(slot);
        });
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, records: Arc<RwLock<DnsRecords>>, ttl: u32) -> std::io::Result<()> {
    loop {
        let length = stream.read_u16().await?;
        let mut message = vec![0u8; usize::from(length)];
        stream.read_exact(&mut message).await?;
        let answer = {
            let records = records.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            answer(&records, ttl, &message, Transport::Tcp)
        };
        let Some(answer) = answer else { return Ok(()) };
        let Ok(length) = u16::try_from(answer.len()) else { return Ok(()) };
        stream.write_u16(length).await?;
        stream.write_all(&answer).await?;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// Answers one DNS message; `None` when nothing should be sent back (responses, or too short to carry an id).
fn answer(records: &DnsRecords, ttl: u32, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(_) => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok();
        }
    };
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.authoritative = true;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        response.set_edns(edns);
    }
    response.metadata.response_code = if request.metadata.message_type != MessageType::Query {
        ResponseCode::FormErr
    } else if request.metadata.op_code != OpCode::Query {
        ResponseCode::NotImp
    } else if request.queries.len() != 1 {
        ResponseCode::FormErr
    } else {
        resolve(records, ttl, &request, &mut response)
    };

    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => request.edns.as_ref().map_or(512, |edns| usize::from(edns.max_payload()).clamp(512, 1232)),
    };
    let bytes = response.to_vec().ok()?;
    if bytes.len() <= limit { Some(bytes) } else { response.truncate().to_vec().ok() }
}

/// Fills the answer and additional sections for the single question of `request`.
fn resolve(records: &DnsRecords, ttl: u32, request: &Message, response: &mut Message) -> ResponseCode {
    let question = &request.queries[0];
    let name = question.name();
    let lowered = name.to_ascii().to_ascii_lowercase();
    let labels: Vec<&str> = lowered.trim_end_matches('.').split('.').collect();
    if labels.last() != Some(&"davit") {
        return ResponseCode::Refused;
    }
    if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY) {
        return ResponseCode::Refused;
    }
    let query_type = question.query_type();
    let wants = |record_type: RecordType| query_type == record_type || query_type == RecordType::ANY;
    match labels.as_slice() {
        ["davit"] | ["service", "davit"] | ["alloc", "davit"] => ResponseCode::NoError,
        [service @ .., "service", "davit"] => {
            let Some(instances) = records.services.get(&service.join(".")) else {
                return ResponseCode::NXDomain;
            };
            if wants(RecordType::A) {
                for instance in instances {
                    response.add_answer(Record::from_rdata(name.clone(), ttl, RData::A(A(instance.ip))));
                }
            }
            if wants(RecordType::SRV) {
                for instance in instances {
                    let Ok(target) = Name::from_ascii(format!("{}.alloc.davit.", instance.alloc_id)) else { continue };
                    let srv = SRV::new(0, 1, instance.port, target.clone());
                    response.add_answer(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
                    let ip = records.allocs.get(&instance.alloc_id.to_ascii_lowercase()).copied().unwrap_or(instance.ip);
                    response.add_additional(Record::from_rdata(target, ttl, RData::A(A(ip))));
                }
            }
            ResponseCode::NoError
        }
        [alloc, "alloc", "davit"] => {
            let Some(&ip) = records.allocs.get(*alloc) else {
                return ResponseCode::NXDomain;
            };
            if wants(RecordType::A) {
                response.add_answer(Record::from_rdata(name.clone(), ttl, RData::A(A(ip))));
            }
            ResponseCode::NoError
        }
        _ => ResponseCode::NXDomain,
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn records() -> DnsRecords {
        let mut records = DnsRecords::default();
        records.services.insert(
            "web".to_string(),
            (1..=3).map(|n| DnsInstance { ip: Ipv4Addr::new(10, 0, 0, n), port: 8000 + u16::from(n), alloc_id: format!("a{n}") }).collect(),
        );
        records.allocs.insert("a1".to_string(), Ipv4Addr::new(10, 0, 0, 1));
        records
    }

    fn query(name: &str, record_type: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        message.to_vec().unwrap()
    }

    fn ask(name: &str, record_type: RecordType) -> Message {
        Message::from_vec(&answer(&records(), 2, &query(name, record_type), Transport::Udp).unwrap()).unwrap()
    }

    #[test]
    fn answers_by_zone() {
        let a = ask("web.service.davit.", RecordType::A);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 3);
        assert_eq!(a.answers[0].ttl, 2);
        let srv = ask("WEB.service.davit.", RecordType::SRV);
        assert_eq!(srv.answers.len(), 3);
        assert_eq!(srv.additionals.len(), 3);
        assert_eq!(ask("nope.service.davit.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ask("x.y.davit.", RecordType::A).metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ask("example.com.", RecordType::A).metadata.response_code, ResponseCode::Refused);
        assert_eq!(ask("a1.alloc.davit.", RecordType::A).answers.len(), 1);
        assert_eq!(ask("web.service.davit.", RecordType::AAAA).answers.len(), 0);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        assert_eq!(answer(&records(), 0, &[1, 2, 3], Transport::Udp), None);
        let mut garbage = query("web.service.davit.", RecordType::A);
        garbage.truncate(garbage.len() - 3);
        let response = Message::from_vec(&answer(&records(), 0, &garbage, Transport::Udp).unwrap()).unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn never_panics_on_random_or_mangled_input() {
        let records = records();
        let mut rng = SmallRng::seed_from_u64(42);
        let valid = [query("web.service.davit.", RecordType::SRV), query("a1.alloc.davit.", RecordType::A), {
            let mut message = Message::query();
            message.add_query(Query::query(Name::from_ascii("web.service.davit.").unwrap(), RecordType::SRV));
            message.set_edns(Edns::new());
            message.to_vec().unwrap()
        }];
        for round in 0..20_000 {
            let mut packet = match round % 3 {
                0 => (0..rng.random_range(0..600)).map(|_| rng.random()).collect::<Vec<u8>>(),
                1 => {
                    let base = &valid[rng.random_range(0..valid.len())];
                    base[..rng.random_range(0..=base.len())].to_vec()
                }
                _ => valid[rng.random_range(0..valid.len())].clone(),
            };
            if round % 3 == 2 {
                for _ in 0..rng.random_range(1..6) {
                    let index = rng.random_range(0..packet.len());
                    packet[index] ^= 1 << rng.random_range(0..8);
                }
            }
            let _ = answer(&records, 1, &packet, Transport::Udp);
            let _ = answer(&records, 1, &packet, Transport::Tcp);
        }
    }
}
