//! `cargo bench -p davit --bench failover`: how long servers on etcd go without a leader when the leader is
//! killed with `kill -9` (issue 23).
//!
//! A 3-member etcd on loopback (tmpfs) and three `davit server --store etcd --leader-ttl 2s`. Each round finds
//! the leader, kills it, and times, from the kill, until (1) a surviving server names another leader and (2) a
//! job registration sent to the survivors (each in turn, every 10 ms) is acknowledged; then it starts the
//! killed server again (it follows). The baseline next to the figures is the lease TTL: a dead leader's lease
//! runs out between TTL − TTL/3 and TTL after its death (it was renewed every TTL/3), so no takeover can be
//! faster than that; what davit adds is the rest. Needs etcd (Debian's `etcd-server`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use davit_client::Client;
use davit_store::etcd_testing::EtcdCluster;

mod common;

use common::{DAVIT, free_port, ms, on_path};

const ROUNDS: usize = 10;
const TTL: Duration = Duration::from_secs(2);

struct Server {
    name: String,
    addr: String,
    process: Option<Child>,
}

impl Server {
    fn start(&mut self, etcd: &EtcdCluster, dir: &std::path::Path) {
        let data = dir.join(&self.name).display().to_string();
        let child = Command::new(DAVIT)
            .args(["server", "--store", "etcd", "--etcd-endpoints", &etcd.endpoints().join(","), "--bind", &self.addr])
            .args(["--data-dir", &data, "--name", &self.name, "--leader-ttl", &format!("{}s", TTL.as_secs())])
            .env("DAVIT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.process = Some(child);
    }

    fn client(&self) -> Client {
        Client::connect(&format!("http://{}", self.addr), None, None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() {
    if !on_path("etcd") {
        println!("skipping: needs etcd (Debian's etcd-server)");
        return;
    }
    let dir = common::tempdir();
    let etcd = EtcdCluster::start(3);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|name| Server { name: name.to_string(), addr: format!("127.0.0.1:{}", free_port()), process: None })
        .collect();
    for server in &mut servers {
        server.start(&etcd, dir.path());
    }
    let leader_of = |server: &Server| -> Option<String> {
        let members = runtime.block_on(server.client().operator_servers()).ok()?;
        members.into_iter().find(|member| member.leader).map(|member| member.name)
    };
    let wait_leader = |servers: &[Server], not: Option<&str>| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no leader within 60 s");
            let found = servers.iter().filter(|server| server.process.is_some()).find_map(&leader_of);
            if let Some(leader) = found.filter(|leader| Some(leader.as_str()) != not) {
                return leader;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    println!(
        "machine: {} cores; {ROUNDS} kills; 3 etcd members (tmpfs), 3 servers, lease TTL {TTL:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (mut elected, mut writable) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let leader = wait_leader(&servers, None);
        // Settled: every server answers (the one started last round too).
        for server in &servers {
            let deadline = Instant::now() + Duration::from_secs(60);
            while leader_of(server).is_none() {
                assert!(Instant::now() < deadline, "server {} does not answer", server.name);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let index = servers.iter().position(|server| server.name == leader).unwrap();
        let killed = Instant::now();
        let mut dead = servers[index].process.take().unwrap();
        dead.kill().unwrap();
        dead.wait().unwrap();
        let next = wait_leader(&servers, Some(&leader));
        elected.push(killed.elapsed());
        let spec = format!(
            "name: round-{round}\ngroups:\n  - name: g\n    count: 1\n    tasks:\n      - {{name: t, driver: exec, config: {{command: /bin/true}}}}\n"
        );
        let survivors: Vec<Client> = servers.iter().filter(|server| server.process.is_some()).map(Server::client).collect();
        let mut attempt = 0;
        loop {
            assert!(killed.elapsed() < Duration::from_secs(60), "no write acknowledged within 60 s");
            if runtime.block_on(survivors[attempt % survivors.len()].register_job(&spec, "failover.yaml")).is_ok() {
                break;
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        writable.push(killed.elapsed());
        println!(
            "  round {round}: killed {leader}; {next} named leader after {:.0} ms, a write acknowledged after {:.0} ms",
            ms(elected[round]),
            ms(writable[round])
        );
        servers[index].start(&etcd, dir.path());
    }
    let summary = |what: &str, values: &mut Vec<Duration>| {
        values.sort();
        println!(
            "{what}: median {:.0} ms, max {:.0} ms (lease TTL {:.0} ms: the lease of a dead leader ends {:.0}–{:.0} ms after it died)",
            ms(values[values.len() / 2]),
            ms(values[values.len() - 1]),
            ms(TTL),
            ms(TTL - TTL / 3),
            ms(TTL)
        );
    };
    summary("new leader named", &mut elected);
    summary("first write acknowledged", &mut writable);
}
