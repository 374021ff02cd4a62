//! The service-discovery DNS server, queried over UDP (and with `dig` when it is installed).

use std::net::Ipv4Addr;
use std::time::Duration;

use davit_proxy::dns::{DnsConfig, DnsServer};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use crate::support::exclusive;

async fn server() -> DnsServer {
    let server = DnsServer::start(DnsConfig { listen: "127.0.0.1:0".parse().unwrap(), ttl: 2 }).await.unwrap();
    server.set_service("web", (1..=3).map(|n| (Ipv4Addr::new(10, 0, 0, n), 8000 + u16::from(n), format!("alloc-{n}"))).collect());
    for n in 1..=3 {
        server.set_alloc(&format!("alloc-{n}"), Ipv4Addr::new(10, 0, 0, n));
    }
    server
}

async fn ask(server: &DnsServer, name: &str, record_type: RecordType) -> Message {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&query.to_vec().unwrap(), server.local_addr()).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let (length, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer)).await.unwrap().unwrap();
    let response = Message::from_vec(&buffer[..length]).unwrap();
    assert_eq!(response.metadata.id, query.metadata.id);
    response
}

#[tokio::test]
async fn service_a_and_srv_records() {
    let _exclusive = exclusive().await;
    let server = server().await;
    let a = ask(&server, "web.service.davit.", RecordType::A).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    let mut ips: Vec<Ipv4Addr> = a
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::A(a) => a.0,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    ips.sort();
    assert_eq!(ips, vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]);
    assert!(a.answers.iter().all(|record| record.ttl == 2));

    let srv = ask(&server, "web.service.davit.", RecordType::SRV).await;
    let mut targets: Vec<(u16, String)> = srv
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::SRV(srv) => (srv.port, srv.target.to_ascii()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            (8001, "alloc-1.alloc.davit.".to_string()),
            (8002, "alloc-2.alloc.davit.".to_string()),
            (8003, "alloc-3.alloc.davit.".to_string())
        ]
    );
    let additional: Vec<String> = srv.additionals.iter().map(|record| record.name.to_ascii()).collect();
    assert_eq!(additional.len(), 3, "{additional:?}");
    assert!(additional.contains(&"alloc-2.alloc.davit.".to_string()));
}

#[tokio::test]
async fn alloc_record_nxdomain_and_refused() {
    let _exclusive = exclusive().await;
    let server = server().await;
    let alloc = ask(&server, "alloc-2.alloc.davit.", RecordType::A).await;
    assert_eq!(alloc.answers.len(), 1);
    assert!(matches!(&alloc.answers[0].data, RData::A(a) if a.0 == Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(ask(&server, "missing.service.davit.", RecordType::A).await.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ask(&server, "missing.alloc.davit.", RecordType::A).await.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ask(&server, "example.com.", RecordType::A).await.metadata.response_code, ResponseCode::Refused);

    server.set_service("web", Vec::new());
    assert_eq!(ask(&server, "web.service.davit.", RecordType::A).await.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn garbage_over_udp_gets_formerr_and_server_keeps_answering() {
    let _exclusive = exclusive().await;
    let server = server().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&[0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0xff, 0xff, 0xff], server.local_addr()).await.unwrap();
    socket.send_to(&[0xab, 0xcd, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0x3f, 0x61], server.local_addr()).await.unwrap();
    let mut buffer = vec![0u8; 512];
    let (length, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer)).await.unwrap().unwrap();
    let response = Message::from_vec(&buffer[..length]).unwrap();
    assert_eq!(response.metadata.id, 0xabcd);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(ask(&server, "web.service.davit.", RecordType::A).await.answers.len(), 3);
}

#[tokio::test]
async fn dig_reads_srv_records() {
    let _exclusive = exclusive().await;
    if std::process::Command::new("dig").arg("-v").output().is_err() {
        assert!(std::env::var("CI").is_err(), "dig is required under CI");
        println!("skipping: dig is not installed");
        return;
    }
    let server = server().await;
    let port = server.local_addr().port().to_string();
    let output = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port, "web.service.davit", "SRV", "+short", "+tries=1", "+time=5"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec!["0 1 8001 alloc-1.alloc.davit.", "0 1 8002 alloc-2.alloc.davit.", "0 1 8003 alloc-3.alloc.davit."],
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tcp = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &port, "alloc-1.alloc.davit", "A", "+short", "+tcp", "+tries=1", "+time=5"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tcp.stdout).trim(), "10.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_side_serves_a_bounded_number_of_connections() {
    use tokio::io::AsyncReadExt;
    let server = DnsServer::start(DnsConfig { listen: "127.0.0.1:0".parse().unwrap(), ttl: 2 }).await.unwrap();
    let addr = server.local_addr();
    // 256 idle connections take every slot; the next one is closed at once.
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0))), "the 257th connection was not closed: {read:?}");
    drop(held);
}
