//! Data-driven spec tests.
//!
//! - Every `tests/specs/bad/*.{yaml,json}` must fail to parse; the full error report is compared with
//!   `tests/specs/bad/<name>.expected` (refresh with `UPDATE_EXPECT=1 cargo test -p davit-api`).
//! - Every `tests/specs/good/*.{yaml,json}` (and every `examples/*.yaml`) must parse, pass `validate`, and
//!   survive a round trip through JSON.
//! - No input, however broken, may panic the parser.

use std::path::{Path, PathBuf};

use davit_api::spec::{JobSpec, SpecErrors, parse_job_spec, validate};

fn spec_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| matches!(path.extension().and_then(|ext| ext.to_str()), Some("yaml" | "json")))
        .collect();
    files.sort();
    files
}

fn good_files() -> Vec<PathBuf> {
    let mut files = spec_files("good");
    // Every example the README and the demo run must stay valid.
    files.extend(example_files());
    files
}

/// `examples/*.yaml` and `examples/*/*.yaml` (examples that need a namespace or a variable first).
fn example_files() -> Vec<PathBuf> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files = Vec::new();
    let mut dirs = vec![examples.clone()];
    for entry in std::fs::read_dir(&examples).unwrap_or_else(|error| panic!("reading {}: {error}", examples.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("reading {}: {error}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.extension().and_then(|ext| ext.to_str()) == Some("yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `scripts/demo.sh` runs every example at once on the one node of `davit dev`, and the README's machine
/// (as CI's) has 2 cores: 2,000 millicores. The demo then plans `hello` with `web` scaled from 3 to 5,
/// which must fit as well.
#[test]
fn the_examples_fit_together_on_a_two_core_dev_node() {
    const NODE_CPU: u64 = 2_000;
    let mut total = 0;
    let mut breakdown = Vec::new();
    for path in example_files() {
        let spec = parse_good(&path);
        let cpu: u64 = spec
            .groups
            .iter()
            .map(|group| {
                // A group with `scaling:` may grow to its max.
                let count = match (spec.job_type, &group.scaling) {
                    (davit_api::spec::JobType::System, _) => 1,
                    (_, Some(scaling)) => u64::from(scaling.max.max(group.count)),
                    (_, None) => u64::from(group.count),
                };
                count * group.tasks.iter().map(|task| u64::from(task.resources.cpu)).sum::<u64>()
            })
            .sum();
        breakdown.push(format!("{}: {cpu}", spec.name));
        total += cpu;
    }
    let hello = parse_good(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello.yaml"));
    let web = hello.groups.iter().find(|group| group.name == "web").expect("hello has a web group");
    let planned = 2 * web.tasks.iter().map(|task| u64::from(task.resources.cpu)).sum::<u64>();
    assert!(
        total + planned <= NODE_CPU,
        "the examples ask for {total} millicores (+{planned} for the demo's plan of hello), more than a 2-core dev node has: {breakdown:?}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// The report as a user sees it, plus each error's path.
fn render(errors: &SpecErrors) -> String {
    let mut out = String::new();
    for error in &errors.0 {
        out += &format!("{}:{}:{}: {}\n", error.file, error.line, error.column, error.message);
        out += &format!("  path: {}\n", if error.path.is_empty() { "(top)" } else { &error.path });
        if let Some(hint) = &error.hint {
            out += &format!("  hint: {hint}\n");
        }
    }
    out
}

fn parse_good(path: &Path) -> JobSpec {
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    parse_job_spec(&read(path), name).unwrap_or_else(|errors| panic!("{} should parse:\n{}", path.display(), render(&errors)))
}

#[test]
fn bad_specs_report_every_problem() {
    let files = spec_files("bad");
    assert!(files.len() >= 24, "only {} bad specs", files.len());
    for path in files {
        let name = format!("bad/{}", path.file_name().and_then(|name| name.to_str()).unwrap_or_default());
        let actual = match parse_job_spec(&read(&path), &name) {
            Ok(spec) => format!("unexpectedly parsed:\n{spec:#?}\n"),
            Err(errors) => {
                assert!(!errors.0.is_empty(), "{name}: an error without entries");
                render(&errors)
            }
        };
        expect_test::expect_file![path.with_extension("expected")].assert_eq(&actual);
    }
}

#[test]
fn good_specs_parse_validate_and_round_trip() {
    let files = good_files();
    assert!(files.len() >= 4);
    for path in files {
        let spec = parse_good(&path);
        validate(&spec, None).unwrap_or_else(|errors| panic!("{}: validate disagrees with parse:\n{}", path.display(), render(&errors)));
        let json = serde_json::to_string_pretty(&spec).expect("serialize");
        let again = parse_job_spec(&json, "round-trip.json")
            .unwrap_or_else(|errors| panic!("{}: round trip:\n{}\n{json}", path.display(), render(&errors)));
        assert_eq!(again, spec, "{}: round trip changed the spec", path.display());
        // And the serde_json path (what the server does with stored specs) agrees.
        let from_serde: JobSpec = serde_json::from_str(&json).expect("serde_json reads what it wrote");
        assert_eq!(from_serde, spec, "{}", path.display());
    }
}

#[test]
fn json_and_yaml_read_the_same() {
    let yaml = parse_good(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/good/shop.yaml"));
    let json = parse_good(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/good/shop.json"));
    assert_eq!(yaml, json);
}

#[test]
fn defaults_are_filled_in() {
    let spec = parse_job_spec("name: tiny\ngroups: [{name: g, tasks: [{name: t, config: {command: /bin/true}}]}]\n", "tiny.yaml")
        .unwrap_or_else(|errors| panic!("{}", render(&errors)));
    assert_eq!(spec.priority, 50);
    assert_eq!(spec.datacenters, vec!["dc1".to_string()]);
    let group = &spec.groups[0];
    assert_eq!(group.count, 1);
    assert_eq!(group.restart.attempts, 2);
    assert_eq!(group.tasks[0].kill_signal, "SIGTERM");
    assert_eq!(group.tasks[0].resources.cpu, 100);
    assert_eq!(group.tasks[0].config, serde_json::json!({"command": "/bin/true"}));
}

#[test]
fn config_values_keep_yaml_types() {
    let spec = parse_job_spec(
        "name: typed\ngroups: [{name: g, network: {ports: [{name: http}]}, tasks: [{name: t, driver: container, config: {image: app, readonly_rootfs: true, working_dir: ~, args: [\"3\"]}}, {name: v, driver: vm, config: {kernel: /k, ports: {http: 0o17}}}]}]\n",
        "typed.yaml",
    )
    .unwrap_or_else(|errors| panic!("{}", render(&errors)));
    let tasks = &spec.groups[0].tasks;
    assert_eq!(tasks[0].config, serde_json::json!({"image": "app", "readonly_rootfs": true, "working_dir": null, "args": ["3"]}));
    assert_eq!(tasks[1].config, serde_json::json!({"kernel": "/k", "ports": {"http": 15}}));
}

#[test]
fn validate_reports_at_zero_positions_for_specs_not_from_text() {
    let mut spec = parse_good(&good_files()[0]);
    spec.name = "Bad Name".to_string();
    spec.priority = 0;
    spec.groups[0].tasks[0].resources.memory = 1;
    let errors = validate(&spec, None).expect_err("invalid");
    expect_test::expect![[r#"
        <spec>:0:0: job name `Bad Name` is not valid: use only lowercase letters, digits and '-'
          path: name
          hint: try `bad-name`
        <spec>:0:0: priority must be an integer from 1 to 100, found `0`
          path: priority
        <spec>:0:0: memory must be at least 4 MiB, found `1`
          path: groups[0].tasks[0].resources.memory
    "#]]
    .assert_eq(&render(&errors));
}

#[test]
fn display_is_file_line_col_message_hint() {
    let errors = parse_job_spec("name: x\ngroups: []\n", "job.yaml").expect_err("no groups");
    assert_eq!(
        errors.to_string(),
        "job.yaml:2:9: the job needs at least one group\n  hint: add `groups:` with a group that has `name:` and `tasks:`"
    );
}

/// Truncated and mangled versions of every good spec: errors are fine, panics are not.
#[test]
fn broken_input_never_panics() {
    let mut inputs = 0;
    for path in good_files() {
        let text = read(&path);
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        for &end in &boundaries {
            let _ = parse_job_spec(&text[..end], "prefix.yaml");
            inputs += 1;
        }
        for &at in boundaries.iter().step_by(13) {
            for replacement in [":", "- ", "[", "{", "\"", "'", "&a ", "*a", "!", "\t", "\n  ", "#", "|", "?", "\u{feff}", "~"] {
                let mut mangled = text.clone();
                if at < mangled.len() {
                    let next = boundaries.iter().find(|b| **b > at).copied().unwrap_or(mangled.len());
                    mangled.replace_range(at..next, replacement);
                } else {
                    mangled.push_str(replacement);
                }
                let _ = parse_job_spec(&mangled, "mangled.yaml");
                inputs += 1;
            }
        }
    }
    assert!(inputs > 1000, "only {inputs} inputs");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for text in ["[".repeat(100_000), "{a: ".repeat(100_000), format!("name: x\nconfig: {}", "- ".repeat(100_000))] {
        let errors = parse_job_spec(&text, "deep.yaml").expect_err("too deep");
        assert_eq!(errors.0.len(), 1, "{errors}");
    }
    let errors =
        parse_job_spec(&format!("name: deep\ngroups: {}1{}\n", "[".repeat(70), "]".repeat(70)), "deep.yaml").expect_err("too deep");
    assert!(errors.to_string().contains("nested more than 64 levels"), "{errors}");
}

/// The job spec the README shows field by field is a spec a user can run as written.
#[test]
fn the_readme_job_spec_is_valid() {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"));
    let start = readme.find("```yaml\n").expect("the README shows a job spec in a ```yaml block") + "```yaml\n".len();
    let end = start + readme[start..].find("```").expect("the yaml block ends");
    let spec = parse_job_spec(&readme[start..end], "README.md")
        .unwrap_or_else(|errors| panic!("the README's job spec (lines counted from its ```yaml block):\n{}", render(&errors)));
    assert_eq!(spec.name, "hello");
}

#[test]
fn a_redeploy_keeps_scaled_counts_and_a_group_at_zero_stays_there_only_while_it_can_be_woken() {
    let spec = |count: u32, scaling: &str| {
        let text = format!(
            "name: shop\ngroups:\n  - name: web\n    count: {count}\n    network: {{ports: [{{name: http}}]}}\n    services: [{{name: web, port: http}}]\n    scaling: {scaling}\n    tasks:\n      - {{name: app, config: {{command: /bin/app}}}}\n"
        );
        parse_job_spec(&text, "shop.yaml").unwrap()
    };
    let zero = "{min: 0, max: 3, scale_to_zero_after: 5m}";
    let running = spec(0, zero);
    // Still scales to zero: the group stays at zero (the next request wakes it).
    let mut next = spec(2, zero);
    assert_eq!(next.keep_scaled_counts(&running).len(), 1);
    assert_eq!(next.groups[0].count, 0);
    // No longer scales to zero (nothing would wake it): the file's count applies.
    let mut next = spec(2, "{min: 0, max: 3}");
    assert!(next.keep_scaled_counts(&running).is_empty());
    assert_eq!(next.groups[0].count, 2);
    // An ordinary scaled group keeps the count it runs.
    let mut next = spec(1, "{min: 1, max: 3}");
    assert_eq!(next.keep_scaled_counts(&spec(3, "{min: 1, max: 3}")).len(), 1);
    assert_eq!(next.groups[0].count, 3);
}
