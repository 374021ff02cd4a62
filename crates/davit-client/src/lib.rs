//! A typed async client of davit's public HTTP API (`/v1`), used by the CLI, the agent and `davit sim`.
//!
//! Every call maps to one route documented in `davit_api::http`. Errors separate "could not reach the
//! server" (CLI exit code 2) from "the server said no" (a 4xx with an [`ApiError`]).
//!
//! This crate must never hold cluster logic: it only moves requests and responses.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub mod exec;

use davit_api::acl::{AclPolicy, AclToken, ApplyPolicyRequest, CreateTokenRequest, CreatedToken, TOKEN_HEADER, TokenSelf};
use davit_api::deployment::Deployment;
use davit_api::http::{
    AllocListEntry, AllocStatusUpdate, ApiError, Catalog, DeploymentHealthRequest, EventWire, ExecQuery, HeartbeatResponse, INDEX_HEADER,
    IndexResponse, JobDiffResponse, JobListEntry, JobPlanResponse, JobStatusResponse, LogsQuery, MigrateAllocRequest, MigrateAllocResponse,
    NEXT_TOKEN_HEADER, NodeAllocStatusUpdates, NodeCertificateResponse, NodeDrainRequest, NodeEligibilityRequest, NodeListEntry,
    NodeRegisterResponse, NodesAllocationsRequest, NodesHeartbeatRequest, NodesHeartbeatResponse, PromoteDeploymentRequest,
    RebalanceRequest, RebalanceResponse, RegisterJobResponse, RevertJobRequest, ScaleJobRequest, ServiceInfo, ServiceListEntry,
    StatusResponse, StopJobResponse, ValidateJobResponse,
};
use davit_api::namespace::{ApplyNamespaceRequest, NamespaceStatus};
use davit_api::objects::{Allocation, Evaluation, Index, Job, Node};
use davit_api::variables::{KeyInfo, PutVariableRequest, Variable, VariableMeta};
use futures_util::Stream;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the davit server at {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{}", .error.message)]
    Api { status: u16, error: ApiError },
    #[error("unexpected answer from {url}: {message}")]
    Decode { url: String, message: String },
    /// The TLS handshake failed: the message says why in the user's terms.
    #[error("cannot talk to the davit server at {addr}: {message}")]
    Tls { addr: String, message: String },
    /// The server ended a stream on its own (an event subscriber that fell too far behind).
    #[error("{message}")]
    StreamEnded { message: String },
    /// The server belongs to another cluster than the caller (an agent) does.
    #[error("{message}")]
    WrongCluster { message: String },
}

impl ClientError {
    /// The server answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }

    /// The server answered 401 or 403: the token is missing, unknown, expired or lacks a capability.
    pub fn is_denied(&self) -> bool {
        matches!(self, ClientError::Api { status: 401 | 403, .. })
    }
}

/// Items asked for per page when following a list's pages.
const PAGE_SIZE: usize = 1000;
/// Bound on every request that is not a blocking query or a stream (a server that stopped answering must
/// not hang an agent or a command forever).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Streams (logs, events, exec sessions) last as long as the user wants.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A client for one server address, e.g. `http://127.0.0.1:7646`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Sent as `?namespace=` with every request that does not name one itself.
    namespace: Option<String>,
    /// Where the CA came from, for messages about failed handshakes (`None`: the system's roots).
    ca_origin: Option<String>,
}

/// How a client talks TLS to `https://` servers: the cluster's CA, and a certificate to present.
#[derive(Clone, Debug)]
pub struct ClientTls {
    roots: Arc<davit_tls::rustls::RootCertStore>,
    origin: String,
    identity: Option<Arc<davit_tls::CertSlot>>,
}

impl ClientTls {
    /// Trusts the CA of `roots` (read from `origin`, named in messages) and presents `identity`.
    pub fn new(roots: Arc<davit_tls::rustls::RootCertStore>, origin: String, identity: Option<Arc<davit_tls::CertSlot>>) -> ClientTls {
        ClientTls { roots, origin, identity }
    }

    /// Trusts the CA in `ca_cert` (e.g. `DAVIT_CACERT`) and presents `identity` when the server asks.
    pub fn load(ca_cert: &Path, identity: Option<Arc<davit_tls::CertSlot>>) -> Result<ClientTls, davit_tls::TlsError> {
        let roots = davit_tls::roots(ca_cert, &davit_tls::read(ca_cert)?)?;
        Ok(ClientTls { roots, origin: ca_cert.display().to_string(), identity })
    }

    /// The CA's trust anchors.
    pub fn roots(&self) -> Arc<davit_tls::rustls::RootCertStore> {
        Arc::clone(&self.roots)
    }

    /// The rustls configuration of a connection to a peer whose certificate must be valid for `expected`.
    pub fn config(&self, expected: &str) -> Result<davit_tls::rustls::ClientConfig, davit_tls::TlsError> {
        davit_tls::client_config(Arc::clone(&self.roots), expected, self.identity.clone())
    }
}

/// A list or object together with the store index it reflects (for blocking queries).
#[derive(Clone, Debug)]
pub struct Indexed<T> {
    pub value: T,
    pub index: Index,
    /// The cluster the answering server belongs to ([`davit_api::http::CLUSTER_HEADER`]; `None` from a
    /// server that does not say).
    pub cluster: Option<String>,
}

impl Client {
    pub fn new(addr: &str) -> Client {
        Client::with_token(addr, None)
    }

    /// A client that sends `token` (an ACL token's secret) with every request.
    pub fn with_token(addr: &str, token: Option<&str>) -> Client {
        Client::connect(addr, token, None)
    }

    /// A client that sends `token` with every request and checks `https://` servers against `tls`'s CA
    /// (a davit server's certificate is valid for [`davit_tls::SERVER_NAME`], whatever its address).
    pub fn connect(addr: &str, token: Option<&str>, tls: Option<&ClientTls>) -> Client {
        Client::connect_with_timeout(addr, token, tls, REQUEST_TIMEOUT)
    }

    /// [`Client::connect`] with another bound than [`REQUEST_TIMEOUT`] on plain requests.
    pub fn connect_with_timeout(addr: &str, token: Option<&str>, tls: Option<&ClientTls>, timeout: Duration) -> Client {
        let base = addr.trim_end_matches('/').to_string();
        let base = if base.contains("://") { base } else { format!("http://{base}") };
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(timeout);
        if let Some(tls) = tls {
            // The roots were parsed already; the configuration of a fixed, valid name cannot fail. With a CA
            // nothing goes out in clear (a token to an `http://` address would).
            builder = builder
                .https_only(true)
                .tls_backend_preconfigured(tls.config(davit_tls::SERVER_NAME).expect("TLS configuration of a davit client"));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token.and_then(|token| reqwest::header::HeaderValue::from_str(token).ok()) {
            let mut token = token;
            token.set_sensitive(true);
            headers.insert(TOKEN_HEADER, token);
        }
        let http = builder.default_headers(headers).build().expect("HTTP client with default settings");
        Client { base, http, namespace: None, ca_origin: tls.map(|tls| tls.origin.clone()) }
    }

    /// The same client, working in `namespace` (`None`: the server's default namespace).
    pub fn in_namespace(&self, namespace: Option<&str>) -> Client {
        Client { namespace: namespace.map(str::to_string), ..self.clone() }
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn addr(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        let mut url = format!("{}{}", self.base, path);
        if let Some(namespace) = self.namespace.as_deref().filter(|_| !path.contains("namespace=")) {
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str("namespace=");
            url.push_str(&encode(namespace));
        }
        url
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<Indexed<T>, ClientError> {
        Ok(self.send_page(request).await?.0)
    }

    /// [`Client::send`], and the answer's next-page token (list routes).
    async fn send_page<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<(Indexed<T>, Option<String>), ClientError> {
        let response = request.send().await.map_err(|source| self.transport_error(source))?;
        let url = response.url().to_string();
        let status = response.status();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let index = header(INDEX_HEADER).and_then(|v| v.parse().ok()).unwrap_or(0);
        let next = header(NEXT_TOKEN_HEADER);
        let cluster = header(davit_api::http::CLUSTER_HEADER);
        let bytes = response.bytes().await.map_err(|source| self.transport_error(source))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url, message: e.to_string() })?;
        Ok((Indexed { value, index, cluster }, next))
    }

    /// Every item of a list route, page after page.
    async fn get_all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut page = format!("{path}{separator}per_page={PAGE_SIZE}");
            if let Some(token) = &next {
                page.push_str("&next_token=");
                page.push_str(token);
            }
            let (items, token) = self.send_page::<Vec<T>>(self.http.get(self.url(&page))).await?;
            all.extend(items.value);
            match token {
                Some(token) => next = Some(token),
                None => return Ok(all),
            }
        }
    }

    fn transport_error(&self, source: reqwest::Error) -> ClientError {
        if source.is_decode() {
            ClientError::Decode { url: source.url().map(|u| u.to_string()).unwrap_or_default(), message: source.to_string() }
        } else if let Some(message) = tls_failure(&source, self.ca_origin.as_deref()) {
            ClientError::Tls { addr: self.base.clone(), message }
        } else {
            ClientError::Unreachable { addr: self.base.clone(), source }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.send(self.http.get(self.url(path))).await?.value)
    }

    /// A blocking query: returns when the answer's index is greater than `index`, or after `wait`.
    async fn get_blocking<T: DeserializeOwned>(&self, path: &str, index: Index, wait: Duration) -> Result<Indexed<T>, ClientError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = self.url(&format!("{path}{separator}index={index}&wait={}ms", wait.as_millis()));
        self.send(self.http.get(url).timeout(wait + Duration::from_secs(10))).await
    }

    // ---- jobs ----

    /// Registers (or updates) a job from spec text; `filename` is used in error positions.
    pub async fn register_job(&self, source: &str, filename: &str) -> Result<RegisterJobResponse, ClientError> {
        let request = self.http.post(self.url("/v1/jobs")).query(&[("filename", filename)]).body(source.to_string());
        Ok(self.send(request).await?.value)
    }

    pub async fn validate_job(&self, source: &str, filename: &str) -> Result<ValidateJobResponse, ClientError> {
        let request = self.http.post(self.url("/v1/jobs/validate")).query(&[("filename", filename)]).body(source.to_string());
        Ok(self.send(request).await?.value)
    }

    /// A dry run of registering the spec: what the scheduler would place, stop and preempt. Stores nothing.
    pub async fn plan_job(&self, source: &str, filename: &str) -> Result<JobPlanResponse, ClientError> {
        // The server may plan for up to two minutes (its scheduler deadline).
        let request = self.http.post(self.url("/v1/jobs/plan")).query(&[("filename", filename)]).body(source.to_string());
        Ok(self.send(request.timeout(REQUEST_TIMEOUT * 3)).await?.value)
    }

    pub async fn jobs(&self) -> Result<Vec<JobListEntry>, ClientError> {
        self.get_all("/v1/jobs").await
    }

    pub async fn job(&self, name: &str) -> Result<Job, ClientError> {
        self.get(&format!("/v1/job/{}", encode(name))).await
    }

    pub async fn job_status(&self, name: &str) -> Result<Indexed<JobStatusResponse>, ClientError> {
        self.send(self.http.get(self.url(&format!("/v1/job/{}/status", encode(name))))).await
    }

    pub async fn job_status_blocking(&self, name: &str, index: Index, wait: Duration) -> Result<Indexed<JobStatusResponse>, ClientError> {
        self.get_blocking(&format!("/v1/job/{}/status", encode(name)), index, wait).await
    }

    pub async fn job_versions(&self, name: &str) -> Result<Vec<Job>, ClientError> {
        self.get_all(&format!("/v1/job/{}/versions", encode(name))).await
    }

    /// A version of the job with id `job_id` (its name in `default`, `<namespace>/<name>` elsewhere: what
    /// allocations carry as `job_name`).
    pub async fn job_version(&self, job_id: &str, version: u64) -> Result<Job, ClientError> {
        let (namespace, name) = davit_api::namespace::split_job_id(job_id);
        self.get(&format!("/v1/job/{}/version/{version}?namespace={}", encode(name), encode(namespace))).await
    }

    pub async fn job_diff(&self, name: &str, from: u64, to: u64) -> Result<JobDiffResponse, ClientError> {
        self.get(&format!("/v1/job/{}/diff?from={from}&to={to}", encode(name))).await
    }

    pub async fn revert_job(&self, name: &str, version: u64) -> Result<RegisterJobResponse, ClientError> {
        let request = self.http.post(self.url(&format!("/v1/job/{}/revert", encode(name)))).json(&RevertJobRequest { version });
        Ok(self.send(request).await?.value)
    }

    pub async fn scale_job(&self, name: &str, group: &str, count: u32) -> Result<RegisterJobResponse, ClientError> {
        let body = ScaleJobRequest { group: group.to_string(), count };
        let request = self.http.post(self.url(&format!("/v1/job/{}/scale", encode(name)))).json(&body);
        Ok(self.send(request).await?.value)
    }

    pub async fn stop_job(&self, name: &str, purge: bool) -> Result<StopJobResponse, ClientError> {
        let request = self.http.delete(self.url(&format!("/v1/job/{}", encode(name)))).query(&[("purge", purge)]);
        Ok(self.send(request).await?.value)
    }

    pub async fn job_allocations(&self, name: &str) -> Result<Vec<AllocListEntry>, ClientError> {
        self.get_all(&format!("/v1/job/{}/allocations", encode(name))).await
    }

    pub async fn job_evaluations(&self, name: &str) -> Result<Vec<Evaluation>, ClientError> {
        self.get_all(&format!("/v1/job/{}/evaluations", encode(name))).await
    }

    // ---- nodes ----

    pub async fn nodes(&self) -> Result<Vec<NodeListEntry>, ClientError> {
        self.get_all("/v1/nodes").await
    }

    /// The node list once the nodes table passes `index` (or after `wait`).
    pub async fn nodes_blocking(&self, index: Index, wait: Duration) -> Result<Indexed<Vec<NodeListEntry>>, ClientError> {
        self.get_blocking(&format!("/v1/nodes?per_page={}", davit_api::http::MAX_PAGE), index, wait).await
    }

    pub async fn node(&self, id: &str) -> Result<Node, ClientError> {
        self.get(&format!("/v1/node/{}", encode(id))).await
    }

    /// Makes the node (id, id prefix or name) eligible or ineligible for new allocations.
    pub async fn set_node_eligibility(&self, id: &str, eligible: bool) -> Result<IndexResponse, ClientError> {
        let request = self.http.post(self.url(&format!("/v1/node/{}/eligibility", encode(id)))).json(&NodeEligibilityRequest { eligible });
        Ok(self.send(request).await?.value)
    }

    /// Starts, changes or (with `enable: false`) cancels a drain of the node (id, id prefix or name).
    pub async fn drain_node(&self, id: &str, drain: &NodeDrainRequest) -> Result<IndexResponse, ClientError> {
        Ok(self.send(self.http.post(self.url(&format!("/v1/node/{}/drain", encode(id)))).json(drain)).await?.value)
    }

    pub async fn register_node(&self, node: &Node) -> Result<NodeRegisterResponse, ClientError> {
        self.register_node_with(node, None, None).await
    }

    /// Registers the node, sending its public key (see [`davit_tls::NodeKey`]) for a certificate, and the
    /// cluster it belongs to (a server of another cluster refuses it with 409 and stores nothing).
    pub async fn register_node_with(
        &self,
        node: &Node,
        public_key: Option<&str>,
        cluster_id: Option<&str>,
    ) -> Result<NodeRegisterResponse, ClientError> {
        let mut request = self.http.post(self.url("/v1/nodes/register")).json(node);
        if let Some(public_key) = public_key {
            request = request.query(&[("public_key", public_key)]);
        }
        if let Some(cluster_id) = cluster_id {
            request = request.query(&[("cluster_id", cluster_id)]);
        }
        Ok(self.send(request).await?.value)
    }

    /// A new certificate for this node, for a new key (the request presents the current certificate).
    pub async fn renew_node_certificate(&self, node_id: &str, public_key: &str) -> Result<NodeCertificateResponse, ClientError> {
        let request = self.http.post(self.url(&format!("/v1/node/{}/certificate", encode(node_id)))).query(&[("public_key", public_key)]);
        Ok(self.send(request).await?.value)
    }

    /// Fails with a 404 [`ClientError::Api`] when the server does not know the node: register again.
    pub async fn heartbeat(&self, node_id: &str) -> Result<HeartbeatResponse, ClientError> {
        Ok(self.send(self.http.put(self.url(&format!("/v1/node/{}/heartbeat", encode(node_id))))).await?.value)
    }

    /// The agent's long-poll: every allocation of the node, once the index passes `index` (or after `wait`).
    pub async fn node_allocations(&self, node_id: &str, index: Index, wait: Duration) -> Result<Indexed<Vec<Allocation>>, ClientError> {
        self.get_blocking(&format!("/v1/node/{}/allocations", encode(node_id)), index, wait).await
    }

    /// The node's usage samples and proxy counters (the agent, every few seconds).
    pub async fn report_usage(&self, node_id: &str, report: &davit_api::http::UsageReport) -> Result<IndexResponse, ClientError> {
        let request = self.http.post(self.url(&format!("/v1/node/{}/usage", encode(node_id)))).json(report);
        Ok(self.send(request).await?.value)
    }

    /// Wakes a group scaled to zero: a request reached this node's proxy for one of its services.
    pub async fn activate(
        &self,
        node_id: &str,
        request: &davit_api::http::ActivateRequest,
    ) -> Result<davit_api::http::ActivateResponse, ClientError> {
        let request = self.http.post(self.url(&format!("/v1/node/{}/activate", encode(node_id)))).json(request);
        Ok(self.send(request).await?.value)
    }

    /// An allocation's latest usage sample next to its requests.
    pub async fn alloc_usage(&self, id: &str) -> Result<davit_api::http::AllocUsageInfo, ClientError> {
        Ok(self.send(self.http.get(self.url(&format!("/v1/allocation/{}/usage", encode(id))))).await?.value)
    }

    /// The autoscaler's view of a job's groups and their latest scaling events.
    pub async fn job_scaling(&self, job: &str) -> Result<davit_api::http::ScalingStatus, ClientError> {
        Ok(self.send(self.http.get(self.url(&format!("/v1/job/{}/scaling", encode(job))))).await?.value)
    }

    pub async fn update_alloc_status(&self, node_id: &str, updates: &[AllocStatusUpdate]) -> Result<IndexResponse, ClientError> {
        let request = self.http.post(self.url(&format!("/v1/node/{}/allocations/status", encode(node_id)))).json(updates);
        Ok(self.send(request).await?.value)
    }

    /// One heartbeat for each of many nodes (`davit sim`); the answer lists the nodes the server does not know.
    pub async fn heartbeat_many(&self, node_ids: &[String]) -> Result<NodesHeartbeatResponse, ClientError> {
        let body = NodesHeartbeatRequest { node_ids: node_ids.to_vec() };
        Ok(self.send(self.http.put(self.url("/v1/nodes/heartbeat")).json(&body)).await?.value)
    }

    /// The long-poll of many nodes at once: their allocations changed after `index` (all of them for 0),
    /// once there are any (or after `wait`). `T` is [`Allocation`], or any type that reads part of one.
    pub async fn nodes_allocations<T: DeserializeOwned>(
        &self,
        node_ids: &[String],
        index: Index,
        wait: Duration,
    ) -> Result<Indexed<Vec<T>>, ClientError> {
        let url = self.url(&format!("/v1/nodes/allocations?index={index}&wait={}ms", wait.as_millis()));
        let body = NodesAllocationsRequest { node_ids: node_ids.to_vec() };
        self.send(self.http.post(url).json(&body).timeout(wait + Duration::from_secs(30))).await
    }

    /// Status updates of many nodes' allocations, committed together.
    pub async fn update_alloc_status_many(&self, updates: &[NodeAllocStatusUpdates]) -> Result<IndexResponse, ClientError> {
        Ok(self.send(self.http.post(self.url("/v1/nodes/allocations/status")).json(updates)).await?.value)
    }

    // ---- allocations and evaluations ----

    pub async fn allocations(&self, prefix: Option<&str>) -> Result<Vec<AllocListEntry>, ClientError> {
        match prefix {
            Some(prefix) => self.get_all(&format!("/v1/allocations?prefix={}", encode(prefix))).await,
            None => self.get_all("/v1/allocations").await,
        }
    }

    /// An allocation by id or unique id prefix.
    pub async fn allocation(&self, id_or_prefix: &str) -> Result<Allocation, ClientError> {
        self.get(&format!("/v1/allocation/{}", encode(id_or_prefix))).await
    }

    /// The task's log as a byte stream (ends at the current end unless `query.follow`).
    pub async fn alloc_logs(
        &self,
        alloc_id: &str,
        query: &LogsQuery,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, ClientError>> + use<>, ClientError> {
        let request = self.http.get(self.url(&format!("/v1/allocation/{}/logs", encode(alloc_id)))).query(query).timeout(STREAM_TIMEOUT);
        let response = request.send().await.map_err(|source| self.transport_error(source))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.map_err(|source| self.transport_error(source))?;
            return Err(api_error(status, &bytes));
        }
        let addr = self.base.clone();
        use futures_util::StreamExt;
        Ok(response
            .bytes_stream()
            .map(move |chunk| chunk.map(|bytes| bytes.to_vec()).map_err(|source| ClientError::Unreachable { addr: addr.clone(), source })))
    }

    /// Opens an exec session in a task of the allocation (relayed by the server to the node's agent).
    pub async fn alloc_exec(&self, alloc_id: &str, query: &ExecQuery) -> Result<exec::ExecStream, ClientError> {
        exec::open(&self.http, &self.url(&format!("/v1/allocation/{}/exec", encode(alloc_id))), query, None).await
    }

    /// The allocation once its modify index passes `index` (or after `wait`).
    /// Starts a live migration of a running VM allocation (to `request.node`, or a node the server picks).
    pub async fn migrate_allocation(&self, id: &str, request: &MigrateAllocRequest) -> Result<MigrateAllocResponse, ClientError> {
        Ok(self.send(self.http.post(self.url(&format!("/v1/allocation/{}/migrate", encode(id)))).json(request)).await?.value)
    }

    /// Asks the allocation's agent to restart its tasks in place.
    pub async fn restart_allocation(&self, id: &str) -> Result<Allocation, ClientError> {
        Ok(self.send(self.http.post(self.url(&format!("/v1/allocation/{}/restart", encode(id))))).await?.value)
    }

    pub async fn allocation_blocking(&self, id: &str, index: Index, wait: Duration) -> Result<Indexed<Allocation>, ClientError> {
        self.get_blocking(&format!("/v1/allocation/{}", encode(id)), index, wait).await
    }

    pub async fn evaluations(&self, job: Option<&str>) -> Result<Vec<Evaluation>, ClientError> {
        match job {
            Some(job) => self.get_all(&format!("/v1/evaluations?job={}", encode(job))).await,
            None => self.get_all("/v1/evaluations").await,
        }
    }

    pub async fn evaluation(&self, id_or_prefix: &str) -> Result<Evaluation, ClientError> {
        self.get(&format!("/v1/evaluation/{}", encode(id_or_prefix))).await
    }

    // ---- deployments ----

    pub async fn deployments(&self) -> Result<Vec<Deployment>, ClientError> {
        self.get_all("/v1/deployments").await
    }

    /// One deployment by id or unique id prefix; a blocking query on its job with `index` > 0.
    pub async fn deployment(&self, id_or_prefix: &str, index: Index, wait: Duration) -> Result<Indexed<Deployment>, ClientError> {
        self.get_blocking(&format!("/v1/deployment/{}", encode(id_or_prefix)), index, wait).await
    }

    /// The deployment of the job's newest version that has one (404 when none has); blocking with `index` > 0.
    pub async fn job_deployment(&self, name: &str, index: Index, wait: Duration) -> Result<Indexed<Deployment>, ClientError> {
        self.get_blocking(&format!("/v1/job/{}/deployment", encode(name)), index, wait).await
    }

    /// The deployment of one version of the job (404 when it has none); blocking with `index` > 0.
    pub async fn job_version_deployment(
        &self,
        name: &str,
        version: u64,
        index: Index,
        wait: Duration,
    ) -> Result<Indexed<Deployment>, ClientError> {
        self.get_blocking(&format!("/v1/job/{}/deployment?version={version}", encode(name)), index, wait).await
    }

    /// `action`: `fail`, `pause` or `resume`.
    pub async fn deployment_action(&self, id_or_prefix: &str, action: &str) -> Result<Deployment, ClientError> {
        Ok(self.send(self.http.post(self.url(&format!("/v1/deployment/{}/{action}", encode(id_or_prefix))))).await?.value)
    }

    /// Promotes the canaries of `groups` (every group's when empty).
    pub async fn promote_deployment(&self, id_or_prefix: &str, groups: Vec<String>) -> Result<Deployment, ClientError> {
        let request = self
            .http
            .post(self.url(&format!("/v1/deployment/{}/promote", encode(id_or_prefix))))
            .json(&PromoteDeploymentRequest { groups });
        Ok(self.send(request).await?.value)
    }

    /// An operator's verdict on allocations the deployment placed.
    pub async fn set_deployment_health(&self, id_or_prefix: &str, verdicts: &DeploymentHealthRequest) -> Result<Deployment, ClientError> {
        let request = self.http.post(self.url(&format!("/v1/deployment/{}/health", encode(id_or_prefix)))).json(verdicts);
        Ok(self.send(request).await?.value)
    }

    // ---- services ----

    pub async fn services(&self) -> Result<Vec<ServiceListEntry>, ClientError> {
        self.get_all("/v1/services").await
    }

    /// One service and its instances; with `stats`, each instance's proxy counters from the agents.
    pub async fn service(&self, name: &str, stats: bool) -> Result<ServiceInfo, ClientError> {
        let query = if stats { "?stats=true" } else { "" };
        self.get(&format!("/v1/service/{}{query}", encode(name))).await
    }

    /// The service once the catalog's index passes `index` (or after `wait`).
    pub async fn service_blocking(&self, name: &str, index: Index, wait: Duration) -> Result<Indexed<ServiceInfo>, ClientError> {
        self.get_blocking(&format!("/v1/service/{}", encode(name)), index, wait).await
    }

    /// The whole catalog once its index passes `index` (or after `wait`): what agents watch.
    pub async fn catalog_blocking(&self, index: Index, wait: Duration) -> Result<Indexed<Catalog>, ClientError> {
        self.get_blocking("/v1/catalog", index, wait).await
    }

    /// Moves a few running service allocations from the most to the least loaded nodes (see `RebalanceRequest`).
    pub async fn rebalance(&self, request: &RebalanceRequest) -> Result<RebalanceResponse, ClientError> {
        Ok(self.send(self.http.post(self.url("/v1/rebalance")).json(request)).await?.value)
    }

    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.get("/v1/status").await
    }

    // ---- namespaces ----

    pub async fn namespaces(&self) -> Result<Vec<NamespaceStatus>, ClientError> {
        self.get_all("/v1/namespaces").await
    }

    pub async fn namespace_status(&self, name: &str) -> Result<NamespaceStatus, ClientError> {
        self.get(&format!("/v1/namespace/{}", encode(name))).await
    }

    pub async fn apply_namespace(&self, name: &str, request: &ApplyNamespaceRequest) -> Result<NamespaceStatus, ClientError> {
        Ok(self.send(self.http.put(self.url(&format!("/v1/namespace/{}", encode(name)))).json(request)).await?.value)
    }

    pub async fn delete_namespace(&self, name: &str) -> Result<IndexResponse, ClientError> {
        Ok(self.send(self.http.delete(self.url(&format!("/v1/namespace/{}", encode(name))))).await?.value)
    }

    // ---- variables ----

    pub async fn variables(&self, prefix: &str) -> Result<Vec<VariableMeta>, ClientError> {
        self.get_all(&format!("/v1/vars?prefix={}", encode(prefix))).await
    }

    pub async fn variable(&self, path: &str) -> Result<Variable, ClientError> {
        self.get(&format!("/v1/var/{}", encode_path(path))).await
    }

    /// Writes a variable; with `cas`, only if its modify index is still that (0: only if it does not exist).
    pub async fn put_variable(&self, path: &str, request: &PutVariableRequest, cas: Option<u64>) -> Result<VariableMeta, ClientError> {
        let mut url = format!("/v1/var/{}", encode_path(path));
        if let Some(cas) = cas {
            url.push_str(&format!("?cas={cas}"));
        }
        Ok(self.send(self.http.put(self.url(&url)).json(request)).await?.value)
    }

    pub async fn delete_variable(&self, path: &str, cas: Option<u64>) -> Result<IndexResponse, ClientError> {
        let mut url = format!("/v1/var/{}", encode_path(path));
        if let Some(cas) = cas {
            url.push_str(&format!("?cas={cas}"));
        }
        Ok(self.send(self.http.delete(self.url(&url))).await?.value)
    }

    /// What the templates of an allocation on `node_id` read, once it changed after `index` (or after `wait`).
    pub async fn template_data(
        &self,
        node_id: &str,
        alloc_id: &str,
        index: Index,
        wait: Duration,
    ) -> Result<Indexed<davit_api::template::TemplateData>, ClientError> {
        self.get_blocking(&format!("/v1/node/{}/allocation/{}/template-data", encode(node_id), encode(alloc_id)), index, wait).await
    }

    pub async fn keyring(&self) -> Result<Vec<KeyInfo>, ClientError> {
        self.get("/v1/operator/keyring").await
    }

    /// One garbage collection pass now (`force`: whatever the age).
    pub async fn gc(&self, force: bool) -> Result<davit_api::http::GcResponse, ClientError> {
        Ok(self.send(self.http.post(self.url(if force { "/v1/operator/gc?force=true" } else { "/v1/operator/gc" }))).await?.value)
    }

    /// The servers of the cluster and which one leads.
    pub async fn operator_servers(&self) -> Result<Vec<davit_api::http::ServerMember>, ClientError> {
        self.get("/v1/operator/servers").await
    }

    /// A snapshot of the whole store (`davit_store::snapshot`'s format), as the server sends it.
    pub async fn snapshot(&self) -> Result<Vec<u8>, ClientError> {
        let request = self.http.get(self.url("/v1/operator/snapshot")).timeout(STREAM_TIMEOUT);
        let response = request.send().await.map_err(|source| self.transport_error(source))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|source| self.transport_error(source))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(bytes.to_vec())
    }

    pub async fn rotate_keyring(&self) -> Result<serde_json::Value, ClientError> {
        Ok(self.send(self.http.post(self.url("/v1/operator/keyring/rotate"))).await?.value)
    }

    pub async fn remove_key(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        Ok(self.send(self.http.delete(self.url(&format!("/v1/operator/keyring/{}", encode(id))))).await?.value)
    }

    // ---- ACL ----

    /// The first management token; works once per cluster.
    pub async fn acl_bootstrap(&self) -> Result<CreatedToken, ClientError> {
        Ok(self.send(self.http.post(self.url("/v1/acl/bootstrap"))).await?.value)
    }

    pub async fn acl_policies(&self) -> Result<Vec<AclPolicy>, ClientError> {
        self.get_all("/v1/acl/policies").await
    }

    pub async fn acl_policy(&self, name: &str) -> Result<AclPolicy, ClientError> {
        self.get(&format!("/v1/acl/policy/{}", encode(name))).await
    }

    pub async fn apply_acl_policy(&self, name: &str, request: &ApplyPolicyRequest) -> Result<AclPolicy, ClientError> {
        Ok(self.send(self.http.put(self.url(&format!("/v1/acl/policy/{}", encode(name)))).json(request)).await?.value)
    }

    pub async fn delete_acl_policy(&self, name: &str) -> Result<IndexResponse, ClientError> {
        Ok(self.send(self.http.delete(self.url(&format!("/v1/acl/policy/{}", encode(name))))).await?.value)
    }

    pub async fn acl_tokens(&self) -> Result<Vec<AclToken>, ClientError> {
        self.get_all("/v1/acl/tokens").await
    }

    pub async fn create_acl_token(&self, request: &CreateTokenRequest) -> Result<CreatedToken, ClientError> {
        Ok(self.send(self.http.post(self.url("/v1/acl/tokens")).json(request)).await?.value)
    }

    pub async fn acl_token(&self, accessor_id: &str) -> Result<AclToken, ClientError> {
        self.get(&format!("/v1/acl/token/{}", encode(accessor_id))).await
    }

    pub async fn revoke_acl_token(&self, accessor_id: &str) -> Result<IndexResponse, ClientError> {
        Ok(self.send(self.http.delete(self.url(&format!("/v1/acl/token/{}", encode(accessor_id))))).await?.value)
    }

    /// The token this client sends, or `secret` instead when given (agents resolve their callers' tokens).
    pub async fn acl_token_self(&self, secret: Option<&str>) -> Result<TokenSelf, ClientError> {
        let mut request = self.http.get(self.url("/v1/acl/token/self"));
        if let Some(secret) = secret {
            request = request.header(TOKEN_HEADER, secret);
        }
        Ok(self.send(request).await?.value)
    }

    /// The event stream: changes after store revision `index` (0: the whole history) of the given
    /// topics (empty: all), until the server goes away. Heartbeat lines (`{}`) are skipped.
    pub async fn event_stream(
        &self,
        index: Index,
        topics: &[String],
    ) -> Result<impl Stream<Item = Result<EventWire, ClientError>> + use<>, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("index", index.to_string())];
        query.extend(topics.iter().map(|topic| ("topic", topic.clone())));
        let request = self.http.get(self.url("/v1/event/stream")).query(&query).timeout(STREAM_TIMEOUT);
        let response = request.send().await.map_err(|source| self.transport_error(source))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.map_err(|source| self.transport_error(source))?;
            return Err(api_error(status, &bytes));
        }
        let url = response.url().to_string();
        let addr = self.base.clone();
        let bytes = Box::pin(response.bytes_stream());
        Ok(futures_util::stream::unfold((bytes, Vec::<u8>::new(), false), move |(mut bytes, mut buffer, done)| {
            let (url, addr) = (url.clone(), addr.clone());
            async move {
                use futures_util::StreamExt;
                if done {
                    return None;
                }
                loop {
                    if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        let line = line.trim_ascii();
                        if line.is_empty() || line == b"{}" {
                            continue;
                        }
                        if let Ok(end) = serde_json::from_slice::<davit_api::http::EventStreamEnd>(line) {
                            return Some((Err(ClientError::StreamEnded { message: end.error.message }), (bytes, buffer, true)));
                        }
                        let event =
                            serde_json::from_slice::<EventWire>(line).map_err(|e| ClientError::Decode { url, message: e.to_string() });
                        return Some((event, (bytes, buffer, false)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                        Some(Err(source)) => return Some((Err(ClientError::Unreachable { addr, source }), (bytes, buffer, true))),
                        None => return None,
                    }
                }
            }
        }))
    }
}

/// What a failed TLS handshake means for the user, if `error` is one. `ca_origin`: the CA file the client
/// trusts (`None`: the system's roots).
pub fn tls_failure(error: &(dyn std::error::Error + 'static), ca_origin: Option<&str>) -> Option<String> {
    use davit_tls::rustls::{CertificateError, Error};
    let mut current = Some(error);
    while let Some(error) = current {
        let rustls = error.downcast_ref::<Error>();
        if let Some(rustls) = rustls {
            return Some(match rustls {
                Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => match ca_origin {
                    Some(origin) => format!("server certificate not signed by DAVIT_CACERT ({origin})"),
                    None => "server certificate not signed by a CA this machine trusts: give the cluster's CA certificate with --ca-cert or DAVIT_CACERT".to_string(),
                },
                Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
                    format!("the server's certificate is not a davit server's (it is not valid for {})", davit_tls::SERVER_NAME)
                }
                Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
                    "the server's certificate expired".to_string()
                }
                Error::InvalidMessage(_) => "it does not speak TLS: use an http:// address".to_string(),
                Error::AlertReceived(alert) => format!("the server refused the TLS handshake ({alert:?}): is this client's certificate signed by the cluster's CA?"),
                other => format!("TLS failed: {other}"),
            });
        }
        // An I/O error's `source` skips the error it wraps: look inside it instead.
        current = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// A non-2xx answer: the server's [`ApiError`], or its raw text when the body is not one.
fn api_error(status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    let error = serde_json::from_slice::<ApiError>(body).unwrap_or_else(|_| ApiError {
        code: "unknown".to_string(),
        message: format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
        spec_errors: Vec::new(),
    });
    ClientError::Api { status: status.as_u16(), error }
}

/// Percent-encodes each segment of a `/`-separated path (a variable path), keeping the slashes.
fn encode_path(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// Percent-encodes a path segment (names are DNS labels and ids are hex, so this rarely changes anything).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_never_answers_fails_plain_requests_within_the_timeout_but_not_blocking_queries_early() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let client = Client::connect_with_timeout(&addr.to_string(), None, None, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let error = client.heartbeat("node").await.unwrap_err();
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // A blocking query waits as long as it asked for (plus a margin), not the plain bound.
        let blocking = tokio::time::timeout(Duration::from_secs(2), client.nodes_blocking(1, Duration::from_secs(1))).await;
        assert!(blocking.is_err(), "the blocking query was cut short: {blocking:?}");
    }
}
