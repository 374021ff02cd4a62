//! End to end on `davit dev`: `davit var put|get|ls|rm` with check-and-set and `@file`, and
//! `davit operator keyring rotate|ls` keeping every variable readable.

mod util;

use std::time::{Duration, Instant};

use util::Dev;

#[test]
fn variables_and_the_keyring_from_the_cli() {
    let dev = Dev::start();
    dev.ok(&["var", "put", "shop/db", "url=postgres://db/shop", "user=shop"]);
    assert_eq!(dev.ok(&["var", "get", "shop/db"]), "url=postgres://db/shop\nuser=shop\n");
    let file = dev.write("items.json", r#"{"token": "abc=def"}"#);
    dev.ok(&["var", "put", "shop/api", &format!("@{file}")]);
    assert_eq!(dev.ok(&["var", "get", "shop/api"]), "token=abc=def\n");
    let listed = dev.ok(&["var", "ls", "shop/"]);
    assert!(listed.contains("shop/db") && listed.contains("shop/api") && !listed.contains("postgres"), "{listed}");

    let output = dev.davit(&["var", "put", "shop/db", "url=other", "--cas", "0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("retry with --cas"), "{output:?}");
    let output = dev.davit(&["var", "put", "shop/db", "no-equals-sign"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected KEY=VALUE"), "{output:?}");

    dev.ok(&["operator", "keyring", "rotate"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys: Vec<serde_json::Value> = serde_json::from_str(&dev.ok(&["operator", "keyring", "ls", "-o", "json"])).unwrap();
        assert_eq!(keys.len(), 2);
        let old = keys.iter().find(|key| key["active"] == false).unwrap();
        if old["variables"] == 0 {
            dev.ok(&["operator", "keyring", "remove", old["id"].as_str().unwrap()]);
            break;
        }
        assert!(Instant::now() < deadline, "the variables were never re-encrypted: {keys:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(dev.ok(&["var", "get", "shop/db"]), "url=postgres://db/shop\nuser=shop\n");
    dev.ok(&["var", "rm", "shop/db"]);
    assert_eq!(dev.davit(&["var", "get", "shop/db"]).status.code(), Some(1));
}
