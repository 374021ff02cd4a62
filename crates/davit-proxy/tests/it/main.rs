//! Integration tests over real loopback sockets: test backends are small hyper/tokio servers in this process.

mod activation;
mod balancing;
mod dns;
mod health;
mod http;
mod pool;
mod support;
mod tcp;
mod wire;
