//! List routes page: `per_page` items from the `next_token` of the previous answer, keyed so a page starts
//! where the last one ended even when items come in between; the client follows pages to the end.

mod common;

use common::start;
use futures_util::StreamExt;

fn spec(name: &str) -> String {
    format!(
        "name: {name}\ngroups:\n  - name: g\n    count: 0\n    tasks:\n      - {{name: t, driver: exec, config: {{command: /bin/true}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_by_key_and_the_client_follows_every_page() {
    let server = start().await;
    let names: Vec<String> = (0..1005).map(|n| format!("job-{n:04}")).collect();
    futures_util::stream::iter(&names)
        .for_each_concurrent(16, |name| {
            let server = &server;
            async move { assert_eq!(server.request("POST", "/v1/jobs", &spec(name)).await.0, 200) }
        })
        .await;

    // Pages of 400: a job registered between two pages, after the token, is on the next one.
    let page = |token: Option<String>| {
        let server = &server;
        async move {
            let mut url = format!("{}/v1/jobs?per_page=400", server.base);
            if let Some(token) = token {
                url.push_str(&format!("&next_token={token}"));
            }
            let response = server.http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let next = response.headers().get("x-davit-next-token").map(|v| v.to_str().unwrap().to_string());
            let jobs: Vec<serde_json::Value> = response.json().await.unwrap();
            (jobs.iter().map(|job| job["name"].as_str().unwrap().to_string()).collect::<Vec<_>>(), next)
        }
    };
    let (first, next) = page(None).await;
    assert_eq!(first.len(), 400);
    assert_eq!(first[0], "job-0000");
    assert_eq!(server.request("POST", "/v1/jobs", &spec("job-0999-late")).await.0, 200);
    let (second, next) = page(next).await;
    let (third, next) = page(next).await;
    assert!(next.is_none(), "three pages hold 1006 jobs");
    let seen: Vec<String> = [first, second, third].concat();
    assert_eq!(seen.len(), 1006);
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "in order, no repeats");
    assert!(seen.contains(&"job-0999-late".to_string()));

    // Bad paging parameters are refused.
    assert_eq!(server.request("GET", "/v1/jobs?per_page=0", "").await.0, 400);
    assert_eq!(server.request("GET", "/v1/jobs?per_page=10001", "").await.0, 400);
    let (status, body) = server.request("GET", "/v1/jobs?next_token=zz", "").await;
    assert_eq!(status, 400, "{body:#}");
    assert!(body["message"].as_str().unwrap().contains("not a next_token"), "{body:#}");

    // Without per_page the server answers 1000 at most; the client follows the pages.
    let (_, first_page) = server.request("GET", "/v1/jobs", "").await;
    assert_eq!(first_page.as_array().unwrap().len(), 1000);
    let client = davit_client::Client::new(&server.base);
    assert_eq!(client.jobs().await.unwrap().len(), 1006);
}
