//! End to end: `davit alloc exec` through the server's relay to the agent (pipes and terminal), its exit
//! codes and errors, and that a session's command dies with its client.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use davit_api::http::JobStatusResponse;
use davit_api::objects::{ClientStatus, DesiredStatus};
use util::{DAVIT, Dev, pid_alive, require_root, wait_alloc, wait_job};

const JOB: &str = r#"
name: shell
groups:
  - name: g
    tasks:
      - name: main
        driver: exec
        config: {command: /bin/sleep, args: ["600"]}
        env: {GREETING: hello}
        resources: {cpu: 20, memory: 32}
      - name: side
        driver: exec
        config: {command: /bin/sleep, args: ["600"]}
        resources: {cpu: 20, memory: 32}
"#;

fn running_alloc(dev: &Dev, job: &str) -> String {
    let placed = |status: &JobStatusResponse| status.allocations.iter().any(|a| a.desired_status == DesiredStatus::Run);
    let status = wait_job(&dev.addr, job, Duration::from_secs(30), placed);
    let id = status.allocations.iter().find(|a| a.desired_status == DesiredStatus::Run).unwrap().id.clone();
    wait_alloc(&dev.addr, &id, Duration::from_secs(30), |a| a.client_status == ClientStatus::Running);
    id
}

/// `davit alloc exec` with `stdin` as its input; (exit code, stdout, stderr).
fn exec(dev: &Dev, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(DAVIT)
        .args(["alloc", "exec"])
        .args(args)
        .env("DAVIT_ADDR", &dev.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

#[test]
fn exec_runs_commands_in_the_task_with_pipes_and_a_terminal() {
    if !require_root() {
        return;
    }
    let dev = Dev::start();
    let spec = dev.write("shell.yaml", JOB);
    dev.ok(&["job", "run", "--detach", &spec]);
    let id = running_alloc(&dev, "shell");
    let short = &id[..8];

    // Output, the task's env and cgroup, separate stderr, and the exit code.
    let script = "echo $GREETING $DAVIT_TASK_NAME; grep pids /proc/self/cgroup; echo oops >&2; exit 7";
    let (code, stdout, stderr) = exec(&dev, &[short, "main", "--", "sh", "-c", script], b"");
    assert_eq!(code, 7, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.starts_with("hello main\n"), "{stdout}");
    assert!(stdout.contains(&format!("/davit/{id}.main")), "exec must join the task's cgroup: {stdout}");
    assert_eq!(stderr, "oops\n");

    // Stdin streams to the command and its end closes the command's stdin.
    let input: Vec<u8> = (0..200_000u32).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    let (code, stdout, _) = exec(&dev, &[short, "side", "--", "wc", "-l"], &input);
    assert_eq!((code, stdout.trim()), (0, "200000"));

    // A terminal: the command sees a tty of the default size, TERM, and stdout and stderr merged.
    let (code, stdout, _) = exec(&dev, &["-t", short, "main", "--", "sh", "-c", "tty; stty size; echo $TERM; echo to-stderr >&2"], b"");
    assert_eq!(code, 0, "{stdout}");
    let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{stdout:?}");
    assert_eq!(&lines[1..], ["24 80", "xterm", "to-stderr"], "{stdout:?}");

    // Errors say what is wrong and exit non-zero.
    let (code, _, stderr) = exec(&dev, &[short, "--", "true"], b"");
    assert_eq!(code, 1);
    assert!(stderr.contains("has several tasks; choose one") && stderr.contains("main, side"), "{stderr}");
    let (code, _, stderr) = exec(&dev, &[short, "nope", "--", "true"], b"");
    assert!(code == 1 && stderr.contains("has no task nope"), "{stderr}");
    let (code, _, stderr) = exec(&dev, &[short, "main", "--", "/no/such/program"], b"");
    assert!(code == 1 && stderr.contains("cannot run \"/no/such/program\": No such file"), "{stderr}");

    // A client that goes away takes its command with it.
    let mut client = Command::new(DAVIT)
        .args(["alloc", "exec", short, "main", "--", "sh", "-c", "echo $$; exec sleep 600"])
        .env("DAVIT_ADDR", &dev.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("pid line: {line:?}"));
    assert!(pid_alive(pid));
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "the exec'd command {pid} outlived its client");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Once the allocation stopped there is nothing to exec into.
    dev.ok(&["job", "stop", "shell"]);
    wait_alloc(&dev.addr, &id, Duration::from_secs(30), |a| a.client_status.is_terminal());
    let (code, _, stderr) = exec(&dev, &[short, "main", "--", "true"], b"");
    assert!(code == 1 && stderr.contains("is not running"), "{stderr}");
}
