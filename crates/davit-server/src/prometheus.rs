//! The autoscaler's `prometheus` metrics: an instant query (`GET {address}/api/v1/query`) whose result — the
//! sum of the vector's samples, or the scalar — is the group's total, against a target per instance (Kubernetes'
//! external metric with an average-value target).
//!
//! The server queries only addresses it was told it may reach (`--allow-prometheus HOST:PORT`, and loopback
//! under `davit dev`): a job spec must not make the server send requests wherever its author likes. Answers are
//! read up to [`MAX_ANSWER_BYTES`] within [`QUERY_TIMEOUT`].

use std::time::Duration;

/// How long one query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Which Prometheus servers the autoscaler may query.
#[derive(Clone, Debug, Default)]
pub struct PrometheusAccess {
    /// `host:port` of each Prometheus it may query.
    pub allowed: Vec<String>,
    /// Also any on a loopback address (`davit dev`).
    pub loopback: bool,
}

impl PrometheusAccess {
    /// Whether `address` may be queried; why not, otherwise.
    pub fn check(&self, address: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(address).map_err(|error| format!("prometheus address {address}: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("prometheus address {address}: only http:// and https:// addresses"));
        }
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = url.port_or_known_default().unwrap_or(0);
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let authority = format!("{host}:{port}");
        if (self.loopback && loopback) || self.allowed.iter().any(|allowed| allowed.eq_ignore_ascii_case(&authority)) {
            Ok(url)
        } else {
            Err(format!("prometheus address {address} is not allowed by the server (start it with --allow-prometheus {authority})"))
        }
    }
}

/// The query's value for the group: the sum of an instant vector's samples, or a scalar.
pub async fn query(http: &reqwest::Client, access: &PrometheusAccess, address: &str, promql: &str) -> Result<f64, String> {
    let base = access.check(address)?;
    let url = base.join("api/v1/query").map_err(|error| format!("prometheus address {address}: {error}"))?;
    let mut response = http
        .get(url)
        .query(&[("query", promql)])
        .timeout(QUERY_TIMEOUT)
        .send()
        .await
        .map_err(|error| format!("querying {address}: {error}"))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| format!("reading {address}'s answer: {error}"))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("{address} answered more than {MAX_ANSWER_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&body).map_err(|error| format!("{address} answered HTTP {status} that is not Prometheus' JSON: {error}"))?;
    value_of(&answer)
}

/// The number in an `/api/v1/query` answer.
fn value_of(answer: &serde_json::Value) -> Result<f64, String> {
    if answer["status"] != "success" {
        return Err(format!("the query failed: {}", answer["error"].as_str().unwrap_or("no error given")));
    }
    let sample = |value: &serde_json::Value| -> Result<f64, String> {
        let text = value.get(1).and_then(serde_json::Value::as_str).ok_or("a sample without a value")?;
        let number: f64 = text.parse().map_err(|_| format!("the sample value {text:?} is not a number"))?;
        if number.is_finite() { Ok(number) } else { Err(format!("the query's value is {text}")) }
    };
    let data = &answer["data"];
    match data["resultType"].as_str() {
        Some("scalar") => sample(&data["result"]),
        Some("vector") => {
            let series = data["result"].as_array().ok_or("a vector without results")?;
            if series.is_empty() {
                return Err("the query returned no series".to_string());
            }
            series.iter().map(|series| sample(&series["value"])).sum()
        }
        other => Err(format!("the query returns a {}; it must return an instant vector or a scalar", other.unwrap_or("nothing"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_allowed_prometheus_servers_are_queried() {
        let access = PrometheusAccess { allowed: vec!["prom.internal:9090".to_string()], loopback: false };
        assert!(access.check("http://prom.internal:9090").is_ok());
        let refused = access.check("http://169.254.169.254/latest").unwrap_err();
        assert!(refused.contains("--allow-prometheus 169.254.169.254:80"), "{refused}");
        assert!(access.check("http://127.0.0.1:9090").is_err());
        assert!(access.check("file:///etc/passwd").unwrap_err().contains("only http://"));
        let dev = PrometheusAccess { allowed: vec![], loopback: true };
        assert!(dev.check("http://127.0.0.1:9090/").is_ok() && dev.check("http://[::1]:9090").is_ok());
    }

    #[test]
    fn a_vector_is_summed_and_an_empty_or_failed_answer_is_an_error() {
        let vector = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"a": "1"}, "value": [1.0, "2.5"]}, {"metric": {"a": "2"}, "value": [1.0, "4"]}]}});
        assert_eq!(value_of(&vector), Ok(6.5));
        let scalar = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}});
        assert_eq!(value_of(&scalar), Ok(3.0));
        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(value_of(&empty), Err("the query returned no series".to_string()));
        let failed = json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert_eq!(value_of(&failed), Err("the query failed: parse error".to_string()));
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(value_of(&matrix).unwrap_err().contains("returns a matrix"));
        let nan = json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "NaN"]}});
        assert!(value_of(&nan).is_err());
    }
}
