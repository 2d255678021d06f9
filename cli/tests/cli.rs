//! The `raftlog` binary as people use it, run as a process against clusters of real node
//! processes (raftlog-testkit): consumers that follow through a kill -9 of their node, bytes in
//! and out in every encoding, produce streaming from stdin, offsets the Kafka way, errors that
//! name the cause, output sized for people. Events are awaited (a long-poll fetch, a line on a
//! pipe), never slept for.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raftlog_client::{pb, record, Client};
use raftlog_testkit::{NodeOptions, TestCluster};

/// The endpoints of the running nodes, comma-separated, `first` first.
fn endpoints(cluster: &TestCluster, first: u64) -> String {
    let mut nodes: Vec<_> = cluster.nodes.iter().filter(|n| n.child.is_some()).collect();
    nodes.sort_by_key(|n| n.id != first);
    let addrs: Vec<&str> = nodes.iter().map(|n| n.grpc.as_str()).collect();
    addrs.join(",")
}

fn raftlog(endpoints: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftlog"));
    cmd.arg("--endpoints").arg(endpoints).args(args);
    cmd.env_remove("RAFTLOG_ENDPOINTS");
    cmd
}

/// Starts the CLI with its stdout and stderr piped to the test.
fn spawn(endpoints: &str, args: &[&str], stdin: Stdio) -> Child {
    raftlog(endpoints, args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run raftlog")
}

/// Runs the CLI to completion with `stdin` as its input.
fn run(endpoints: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = spawn(endpoints, args, Stdio::piped());
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    output
}

/// Runs the CLI and requires success; returns stdout.
fn ok(endpoints: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let out = run(endpoints, args, stdin);
    assert!(
        out.status.success(),
        "raftlog {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

/// Runs the CLI, requires it to fail; returns stderr.
fn fails(endpoints: &str, args: &[&str]) -> String {
    let out = run(endpoints, args, b"");
    assert!(!out.status.success(), "raftlog {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A CLI process whose stdout lines are read as they come.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(endpoints: &str, args: &[&str]) -> Self {
        Self::of(spawn(endpoints, args, Stdio::null()))
    }

    /// Reads the stdout of a child started with a piped stdout.
    fn of(mut child: Child) -> Self {
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                if tx.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits up to `timeout` for a line that contains `text`; returns it.
    fn wait_for(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with '{text}' in {timeout:?}"),
            }
        }
    }

    /// The next `n` lines, waiting up to `timeout` for them.
    fn take(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.lines
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("line {} of {n} did not come in {timeout:?}", i + 1))
            })
            .collect()
    }

    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        stderr
    }
}

async fn produce(client: &Client, topic: &str, partition: u32, values: &[String]) {
    let records = values
        .iter()
        .map(|v| record(v.clone().into_bytes()))
        .collect();
    client.produce(topic, partition, records).await.unwrap();
}

/// The value stored at `topic`/`partition`/`offset`, read through the library.
async fn stored(client: &Client, topic: &str, partition: u32, offset: u64) -> pb::Record {
    let request = pb::FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        max_records: 1,
        max_bytes: 0,
        max_wait_ms: 5_000,
    };
    let response = client.fetch(request).await.unwrap();
    response.records.into_iter().next().expect("a record")
}

/// kill -9 of the node a following consumer reads from (the leader, so group commits lose their
/// node too): the consumer goes on from another endpoint and prints every record exactly once,
/// with and without a group, and the group's committed offsets end at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_follow_through_a_kill9_of_their_node_printing_each_record_once() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("f", 2).await.unwrap();
    let values = |from: usize, to: usize| (from..to).map(|i| format!("v{i}")).collect::<Vec<_>>();
    produce(&client, "f", 0, &values(0, 100)).await;
    produce(&client, "f", 1, &values(100, 200)).await;

    let eps = endpoints(&cluster, leader);
    let format = ["--format", "%v\\n"];
    let plain = Running::start(&eps, &[&["consume", "f", "-f"][..], &format].concat());
    let grouped = Running::start(
        &eps,
        &[&["consume", "f", "-f", "-g", "g"][..], &format].concat(),
    );
    let mut seen_plain = plain.take(200, Duration::from_secs(30));
    let mut seen_grouped = grouped.take(200, Duration::from_secs(30));

    cluster.kill9(leader);
    cluster.wait_for_leader().await;
    let client = cluster.client();
    produce(&client, "f", 0, &values(200, 300)).await;
    produce(&client, "f", 1, &values(300, 400)).await;
    seen_plain.extend(plain.take(200, Duration::from_secs(60)));
    seen_grouped.extend(grouped.take(200, Duration::from_secs(60)));
    // Nothing more comes: a duplicate would show up here.
    assert!(plain
        .lines
        .recv_timeout(Duration::from_millis(500))
        .is_err());
    let (plain_err, grouped_err) = (plain.stop(), grouped.stop());
    for (seen, stderr) in [(seen_plain, plain_err), (seen_grouped, grouped_err)] {
        let mut sorted = seen.clone();
        sorted.sort_by_key(|v| v[1..].parse::<u32>().unwrap());
        assert_eq!(sorted, values(0, 400), "each record exactly once");
        let dead = &cluster.node(leader).grpc;
        assert!(
            stderr.contains(&format!("note: node {dead} failed")),
            "{stderr}"
        );
    }
    let group = client.describe_group("g").await.unwrap();
    let committed: Vec<_> = group
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect();
    assert_eq!((committed, group.total_lag), (vec![200, 200], 0));
}

/// Random bytes (every byte value, newlines and NULs included) go in and come out unchanged in
/// each encoding: raw, text (escaped), hex, base64, and the JSON form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_payload_round_trips_byte_for_byte_in_every_encoding() {
    let cluster = TestCluster::start(1, NodeOptions::default());
    cluster.wait_for_leader().await;
    let (client, eps) = (cluster.client(), endpoints(&cluster, 1));
    client.create_topic("bin", 1).await.unwrap();
    let mut payload: Vec<u8> = (0..=255u8).collect();
    payload.extend((0..4096).map(|_| rand::random::<u8>()));

    // raw: the whole of stdin is one record; the template prints the value alone.
    ok(
        &eps,
        &["produce", "bin", "-p", "0", "--delimiter", ""],
        &payload,
    );
    assert_eq!(stored(&client, "bin", 0, 0).await.value, payload);
    let consume = |offset: &str, extra: &[&str]| {
        let args = [
            &["consume", "bin", "-p", "0", "-o", offset, "-n", "1"][..],
            extra,
        ]
        .concat();
        ok(&eps, &args, b"")
    };
    assert_eq!(consume("0", &["--format", "%v{raw}"]), payload);

    // text, hex, base64: what consume prints, produce reads back to the same bytes.
    for (n, encoding) in [(1, "text"), (2, "hex"), (3, "base64")] {
        let printed = consume("0", &["--value-encoding", encoding, "--format", "%v\\n"]);
        assert!(
            !printed[..printed.len() - 1].contains(&b'\n'),
            "{encoding}: one line"
        );
        ok(
            &eps,
            &["produce", "bin", "-p", "0", "--value-encoding", encoding],
            &printed,
        );
        assert_eq!(
            stored(&client, "bin", 0, n).await.value,
            payload,
            "{encoding}"
        );
        let again = consume(
            &n.to_string(),
            &["--value-encoding", encoding, "--format", "%v\\n"],
        );
        assert_eq!(again, printed, "{encoding}");
    }

    // The JSON form: not UTF-8, so the value travels as value_base64; a binary key and a
    // repeated header keep their bytes and order.
    let key_hex = "00ff0a";
    ok(
        &eps,
        &[
            "produce",
            "bin",
            "-p",
            "0",
            "-k",
            key_hex,
            "--key-encoding",
            "hex",
            "-H",
            "h=1",
            "-H",
            "h=2",
            "--delimiter",
            "",
        ],
        &payload,
    );
    let line = consume("4", &["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert!(json.get("value_base64").is_some(), "{json}");
    ok(&eps, &["produce", "bin", "-p", "0", "--from-json"], &line);
    let copy = stored(&client, "bin", 0, 5).await;
    assert_eq!(copy.value, payload);
    assert_eq!(copy.key.as_deref(), Some(&[0x00, 0xff, 0x0a][..]));
    let headers: Vec<_> = copy
        .headers
        .iter()
        .map(|h| (h.key.as_str(), &h.value[..]))
        .collect();
    assert_eq!(headers, vec![("h", &b"1"[..]), ("h", &b"2"[..])]);

    // Control characters never reach the terminal raw in the default output.
    ok(
        &eps,
        &["produce", "bin", "-p", "0", "tab\there\u{1b}[31mred"],
        b"",
    );
    let shown = text(consume("6", &[]));
    assert_eq!(shown, "0\t6\t\ttab\\there\\x1b[31mred\n");
}

/// `consume | head -1`: the closed pipe ends the CLI quietly with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_consume_quietly_and_stdin_streams_as_it_arrives() {
    let cluster = TestCluster::start(1, NodeOptions::default());
    cluster.wait_for_leader().await;
    let (client, eps) = (cluster.client(), endpoints(&cluster, 1));
    client.create_topic("many", 1).await.unwrap();
    let values: Vec<String> = (0..3000).map(|i| format!("{i:0>100}")).collect();
    produce(&client, "many", 0, &values).await;
    let mut child = spawn(&eps, &["consume", "many"], Stdio::null());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap(); // the reader is dropped here: the pipe closes
    let out = child.wait_with_output().unwrap();
    assert!(first.starts_with("0\t0\t\t"), "{first}");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // tail -f | raftlog produce: each line is visible to a consumer while stdin stays open.
    client.create_topic("stream", 1).await.unwrap();
    let mut producer = spawn(&eps, &["produce", "stream", "-p", "0"], Stdio::piped());
    let mut stdin = producer.stdin.take().unwrap();
    let mut latencies = Vec::new();
    for i in 0..5u64 {
        let sent = Instant::now();
        writeln!(stdin, "line-{i}").unwrap();
        stdin.flush().unwrap();
        // A long poll: answers as soon as the record is committed.
        let r = stored(&client, "stream", 0, i).await;
        latencies.push(sent.elapsed());
        assert_eq!(r.value, format!("line-{i}").into_bytes());
    }
    eprintln!("produce from stdin, line written to record visible: {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(2)),
        "{latencies:?}"
    );
    drop(stdin);
    let out = producer.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        text(out.stdout),
        "produced 5 records to stream/0 at offsets 0 to 4\n"
    );

    // At a terminal (a pty from util-linux's `script`), produce is interactive: a hint, then
    // each record's offset as soon as it is acknowledged, before the next line is typed.
    if Command::new("script").arg("--version").output().is_ok() {
        let cli = env!("CARGO_BIN_EXE_raftlog");
        let command = format!("{cli} --endpoints {eps} produce stream -p 0");
        let mut terminal = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut keyboard = terminal.stdin.take().unwrap();
        let screen = Running::of(terminal);
        screen.wait_for("Type one record per line", Duration::from_secs(10));
        for offset in [5, 6] {
            keyboard
                .write_all(format!("typed-{offset}\n").as_bytes())
                .unwrap();
            let ack = format!("-> stream/0 offset {offset}");
            screen.wait_for(&ack, Duration::from_secs(10));
        }
        keyboard.write_all(b"\x04").unwrap(); // Ctrl-D
        screen.wait_for(
            "produced 2 records to stream/0 at offsets 5 to 6",
            Duration::from_secs(10),
        );
        screen.stop();
    } else {
        eprintln!("no `script` (util-linux): the interactive produce check is skipped");
    }

    // A line without the key separator is sent, with a warning.
    let out = run(
        &eps,
        &["produce", "stream", "--key-separator", ":"],
        b"k:v\nno-key\n",
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: record 2 has no ':' (--key-separator)"),
        "{stderr}"
    );
}

/// Offsets as Kafka users type them, each partition on its own; -o with --group moves the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_the_kafka_way_each_partition_on_its_own() {
    let cluster = TestCluster::start(1, NodeOptions::default());
    cluster.wait_for_leader().await;
    let (client, eps) = (cluster.client(), endpoints(&cluster, 1));
    client.create_topic("o", 3).await.unwrap();
    for (p, n) in [(0u32, 2usize), (1, 3), (2, 2)] {
        let values: Vec<String> = (0..n).map(|i| format!("p{p}-{i}")).collect();
        produce(&client, "o", p, &values).await;
    }
    let consume = |args: &[&str]| {
        let mut lines: Vec<String> = text(ok(
            &eps,
            &[&["consume", "o", "--format", "%v\\n"][..], args].concat(),
            b"",
        ))
        .lines()
        .map(str::to_string)
        .collect();
        lines.sort();
        lines
    };
    assert_eq!(consume(&["-o", "-1"]), ["p0-1", "p1-2", "p2-1"]);
    assert_eq!(consume(&["-o", "+2"]), ["p1-2"]);
    assert_eq!(consume(&["-o", "2"]), ["p1-2"]);
    assert_eq!(consume(&["-o", "end"]), Vec::<String>::new());
    assert_eq!(consume(&["-o", "start"]).len(), 7);
    // Past the end of every partition: notes, no failure.
    let out = run(&eps, &["consume", "o", "-o", "5"], b"");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("note: o/1: offset 5 is outside the retained offsets 0 to 2; starting at 3"),
        "{stderr}"
    );

    // A new group exists once it starts reading, even with nothing to read.
    assert_eq!(consume(&["-g", "new", "-o", "end"]), Vec::<String>::new());
    let new = client.describe_group("new").await.unwrap();
    assert_eq!(new.partitions.len(), 3);

    // A group resumes; -o with the group moves it (and says so).
    assert_eq!(
        consume(&["-p", "1", "-g", "g", "-n", "2"]),
        ["p1-0", "p1-1"]
    );
    assert_eq!(consume(&["-p", "1", "-g", "g"]), ["p1-2"]);
    let out = run(
        &eps,
        &[
            "consume", "o", "-p", "1", "-g", "g", "-o", "0", "-n", "1", "--format", "%v\\n",
        ],
        b"",
    );
    assert_eq!(text(out.stdout), "p1-0\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: group g starts at -o"));
    let group = client.describe_group("g").await.unwrap();
    assert_eq!(
        group.partitions[0].committed_offset, 1,
        "the group moved back to 1"
    );

    // By time: the first batch appended at or after it (the leader's clock).
    let t = stored(&client, "o", 1, 2).await.timestamp_ms;
    while now_ms() <= t {
        tokio::time::sleep(Duration::from_millis(1)).await; // the next batch gets a later time
    }
    produce(&client, "o", 1, &["p1-3".to_string()]).await;
    assert_eq!(
        consume(&["-p", "1", "-o", &format!("@{}", t + 1)]),
        ["p1-3"]
    );
    assert_eq!(consume(&["-p", "1", "-o", "@-1h"]).len(), 4);

    // Group admin: seek (backwards too), commit by hand, reset, delete.
    let committed = |offsets: &[(u32, u64)]| {
        let json = ok(&eps, &["--json", "group", "describe", "g"], b"");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let got: Vec<(u32, u64)> = v["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["partition"].as_u64().unwrap() as u32,
                    p["committed_offset"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, offsets);
    };
    ok(&eps, &["group", "seek", "g", "-t", "o", "--to", "end"], b"");
    committed(&[(0, 2), (1, 4), (2, 2)]);
    ok(
        &eps,
        &["group", "seek", "g", "-t", "o", "--to", "-1", "-p", "1"],
        b"",
    );
    committed(&[(0, 2), (1, 3), (2, 2)]);
    ok(
        &eps,
        &["group", "commit", "g", "-t", "o", "0=1", "2=0"],
        b"",
    );
    committed(&[(0, 1), (1, 3), (2, 0)]);
    ok(&eps, &["group", "reset", "g", "-t", "o"], b"");
    committed(&[(0, 0), (1, 0), (2, 0)]);
    assert!(fails(&eps, &["group", "delete", "g"]).contains("add --yes"));
    ok(&eps, &["group", "delete", "g", "--yes"], b"");
    assert!(fails(&eps, &["group", "describe", "g"]).contains("NotFound"));
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since_epoch.unwrap().as_millis() as i64
}

/// Errors name the cause and the fix: the admin port, a node id that is not a member, no quorum
/// (within seconds), a node never initialized; `cluster status` gives a verdict and its exit
/// status says it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_cause_and_the_fix() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let eps = endpoints(&cluster, leader);
    cluster.client().create_topic("e", 1).await.unwrap();

    let status = text(ok(&eps, &["cluster", "status"], b""));
    assert!(status.contains("healthy: yes"), "{status}");
    assert!(status.lines().all(|l| l.chars().count() <= 80), "{status}");

    let admin = cluster.node(1).admin.clone();
    let stderr = fails(&admin, &["topic", "list"]);
    assert!(stderr.contains("admin HTTP port"), "{stderr}");
    assert!(stderr.contains(&cluster.node(1).grpc), "{stderr}");

    let stderr = fails(&eps, &["cluster", "remove", "9", "--yes"]);
    assert!(
        stderr.contains("node 9 is not a member: voters 1, 2, 3"),
        "{stderr}"
    );
    let stderr = fails(&eps, &["cluster", "remove", "3"]);
    assert!(stderr.contains("add --yes"), "{stderr}");
    let stderr = fails(&eps, &["consume", "e", "--node", "9"]);
    assert!(stderr.contains("node 9 is not a member"), "{stderr}");

    // A node that was never part of a cluster.
    let lonely = cluster.add_node_process();
    let lonely_addr = cluster.node(lonely).grpc.clone();
    let started = Instant::now();
    let stderr = fails(&lonely_addr, &["topic", "create", "x"]);
    assert!(
        stderr.contains("not part of an initialized cluster"),
        "{stderr}"
    );
    assert!(stderr.contains("raftlog cluster init"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    cluster.kill9(lonely);

    // Two of three voters down: a write fails in seconds, naming them.
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    cluster.kill9(others[0]);
    let out = run(&eps, &["cluster", "status"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(out.stdout).contains("healthy: no"));
    cluster.kill9(others[1]);
    let started = Instant::now();
    let stderr = fails(&eps, &["produce", "e", "x", "--timeout", "60s"]);
    let took = started.elapsed();
    assert!(
        stderr.contains("no quorum: 2 of 3 voters unreachable"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("no-quorum produce failed after {took:?}: {stderr}");

    // The last node paused (SIGSTOP): it accepts connections and never answers. A read gives up
    // within its --timeout, saying no node answered, instead of waiting on each node in turn.
    let pid = cluster
        .node(leader)
        .child
        .as_ref()
        .unwrap()
        .id()
        .to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let stderr = fails(&eps, &["topic", "list", "--timeout", "2s"]);
    let took = started.elapsed();
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert!(stderr.contains("no node answered"), "{stderr}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    eprintln!("paused cluster: topic list --timeout 2s failed after {took:?}: {stderr}");
}

/// Output sized for people: one line per topic, the config in describe, units accepted,
/// completion scripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_for_people_and_units() {
    let cluster = TestCluster::start(1, NodeOptions::default());
    cluster.wait_for_leader().await;
    let eps = endpoints(&cluster, 1);
    ok(
        &eps,
        &[
            "topic",
            "create",
            "big",
            "-p",
            "200",
            "--retention",
            "7d",
            "--retention-bytes",
            "1GiB",
        ],
        b"",
    );
    ok(&eps, &["topic", "create", "small"], b"");
    let list = text(ok(&eps, &["topic", "list"], b""));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains("big    200"), "{list}");
    let describe = text(ok(&eps, &["topic", "describe", "big"], b""));
    assert!(
        describe.contains("7days") && describe.contains("1 GiB"),
        "{describe}"
    );
    let stderr = fails(&eps, &["topic", "create", "zero", "--partitions", "0"]);
    assert!(stderr.contains("0 is not in 1.."), "{stderr}");
    let stderr = fails(&eps, &["topic", "alter", "big", "--partitions", "400"]);
    assert!(
        stderr.contains("partition count is fixed at creation"),
        "{stderr}"
    );
    let completion = text(ok(&eps, &["completion", "bash"], b""));
    assert!(completion.contains("complete -F"), "{completion}");
}

/// `raftlog bench produce` stores every request it counts, on each transport it measures: the
/// stream, unary calls through raftlog's client, and unary calls through tonic's generated stub
/// (the third is what `scripts/bench.sh` compares as "generated stub"; nothing else runs it in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_produce_stores_what_it_counts_on_every_transport() {
    let cluster = TestCluster::start(1, NodeOptions::default());
    cluster.wait_for_leader().await;
    let eps = endpoints(&cluster, 1);
    let transports: [(&str, &[&str]); 3] = [
        ("stream", &[]),
        ("unary", &["--unary"]),
        (
            "unary, generated client",
            &["--unary", "--generated-client"],
        ),
    ];
    for (i, (transport, flags)) in transports.into_iter().enumerate() {
        let topic = format!("bench-{i}");
        let mut args = vec![
            "--json",
            "bench",
            "produce",
            "--topic",
            &topic,
            "--count",
            "300",
            "--concurrency",
            "8",
            "--record-bytes",
            "100",
        ];
        args.extend_from_slice(flags);
        let out = text(ok(&eps, &args, b""));
        let result: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(result["transport"], transport, "{out}");
        assert_eq!(result["requests"], 300, "{out}");
        let offsets = cluster
            .client()
            .list_offsets(&topic, &[0], None)
            .await
            .unwrap();
        assert_eq!(offsets[0].end_offset, 300, "{transport}: {offsets:?}");
    }
}

/// Two `consume -g` processes share a topic's partitions; kill -9 of one moves its partitions to
/// the other within the session timeout (10 s by default), which reads on from the group's
/// committed offsets and says what it reads now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_split_partitions_and_a_killed_members_move_to_the_other() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("w", 4).await.unwrap();
    for p in 0..4 {
        let values: Vec<String> = (0..10).map(|i| format!("p{p}-{i}")).collect();
        produce(&client, "w", p, &values).await;
    }
    let eps = endpoints(&cluster, leader);
    let args = [
        "consume", "w", "-g", "workers", "-f", "--format", "%p %v\\n",
    ];
    let first = Running::start(&eps, &args);
    assert_eq!(first.take(40, Duration::from_secs(30)).len(), 40);
    let second = Running::start(&eps, &args);
    // Two members, two partitions each, every partition owned once.
    let owned_by = |info: &pb::GroupInfo| -> Vec<Vec<u32>> {
        info.members
            .iter()
            .map(|m| {
                m.assigned
                    .iter()
                    .flat_map(|tp| tp.partitions.clone())
                    .collect()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let split = loop {
        let info = client.describe_group("workers").await.unwrap();
        if info.state == "stable" && info.members.len() == 2 {
            break owned_by(&info);
        }
        assert!(Instant::now() < deadline, "no stable split: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);

    // kill -9 of the first: after its session expires, the second reads all four partitions,
    // the first one's from where the group committed (nothing is printed twice by the second).
    let killed_at = Instant::now();
    let first_err = first.stop();
    assert!(first_err.contains("note: member"), "{first_err}");
    for p in 0..4 {
        let values: Vec<String> = (10..15).map(|i| format!("p{p}-{i}")).collect();
        produce(&client, "w", p, &values).await;
    }
    let mut lines = second.take(20, Duration::from_secs(25));
    let moved_after = killed_at.elapsed();
    lines.sort();
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..4)
            .flat_map(|p| (10..15).map(move |i| format!("{p} p{p}-{i}")))
            .collect();
        v.sort();
        v
    };
    assert_eq!(lines, expected);
    eprintln!("partitions of the killed member read again {moved_after:?} after the kill");
    let info = client.describe_group("workers").await.unwrap();
    assert_eq!(info.members.len(), 1, "{info:?}");
    assert_eq!(owned_by(&info), [vec![0, 1, 2, 3]]);
    let second_err = second.stop();
    assert!(second_err.contains("(epoch"), "{second_err}");
}

/// `raftlog cert` makes a CA and certificates a TLS cluster of real nodes serves with; the CLI
/// reaches it with the TLS flags or their environment variables, and not without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_raftlog_cert_serve_a_tls_cluster_the_cli_reaches_with_its_tls_flags() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path().to_str().unwrap();
    ok("", &["cert", "ca", "--dir", dir], b"");
    for id in ["1", "2", "3"] {
        ok(
            "",
            &["cert", "node", id, "--host", "127.0.0.1", "--dir", dir],
            b"",
        );
    }
    ok("", &["cert", "client", "client", "--dir", dir], b"");
    let again = fails("", &["cert", "node", "1", "--dir", dir]);
    assert!(again.contains("--force"), "{again}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(pki.path().join("node-1-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let options = NodeOptions {
        tls_dir: Some(pki.path().to_path_buf()),
        ..Default::default()
    };
    let cluster = TestCluster::start(3, options);
    cluster.wait_for_leader().await;
    let eps = endpoints(&cluster, 1);
    let (ca, cert, key) = (
        format!("{dir}/ca.pem"),
        format!("{dir}/client.pem"),
        format!("{dir}/client-key.pem"),
    );
    let tls = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    fn with_tls<'a>(tls: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
        [tls, args].concat()
    }
    ok(&eps, &with_tls(&tls, &["topic", "create", "secure"]), b"");
    ok(&eps, &with_tls(&tls, &["produce", "secure", "hello"]), b"");
    let out = text(ok(
        &eps,
        &with_tls(&tls, &["consume", "secure", "--format", "%v\\n"]),
        b"",
    ));
    assert_eq!(out, "hello\n");
    // The environment variables do what the flags do; a server-only TLS client is let in too
    // (client certificates are optional by default).
    let status = raftlog(&eps, &["cluster", "status"])
        .env("RAFTLOG_TLS_CA", &ca)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Without TLS the nodes answer nothing, and the error says what to give; a certificate
    // without the CA is a usage error.
    let plaintext = fails(&eps, &["topic", "list", "--timeout", "2s"]);
    assert!(plaintext.contains("--tls-ca"), "{plaintext}");
    let err = fails(
        &eps,
        &["--cert", &cert, "--tls-key", &key, "cluster", "status"],
    );
    assert!(err.contains("--tls-ca"), "{err}");
}

/// The bootstrap token of [`auth_cluster`]'s nodes: a super-user's.
const ADMIN: &str = "cli-test-bootstrap-token-0123456789abcdef";

/// A 3-node cluster with auth on (and [`ADMIN`] as its bootstrap token), with a leader, and the
/// CLI's endpoints of node 1.
async fn auth_cluster() -> (TestCluster, String) {
    let cluster = TestCluster::start(
        3,
        NodeOptions {
            admin_token: Some(ADMIN.into()),
            ..Default::default()
        },
    );
    cluster.wait_for_leader().await;
    let eps = endpoints(&cluster, 1);
    (cluster, eps)
}

/// `args` as the admin: with the bootstrap token as a flag.
fn as_admin(args: &[&'static str]) -> Vec<&'static str> {
    [&["--token", ADMIN][..], args].concat()
}

/// With auth on: the bootstrap token (flag) makes a token and an ACL entry for alice; alice's
/// token (in RAFTLOG_TOKEN) writes where the entry allows and is refused elsewhere with a hint;
/// no token is refused with a hint to give one; a revoked token stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_acl_entries_from_the_cli() {
    let (cluster, eps) = auth_cluster().await;
    ok(&eps, &as_admin(&["topic", "create", "orders"]), b"");
    let created = ok(
        &eps,
        &as_admin(&[
            "token",
            "create",
            "--principal",
            "alice",
            "--expires-in",
            "1h",
        ]),
        b"",
    );
    let token = text(created).trim().to_string();
    assert!(token.starts_with("raftlog_"), "{token}");
    let added = text(ok(
        &eps,
        &as_admin(&[
            "acl",
            "add",
            "--principal",
            "alice",
            "--resource",
            "topic",
            "--name",
            "orders",
            "--operation",
            "write",
        ]),
        b"",
    ));
    assert!(added.contains("added ACL entry 1"), "{added}");
    let list = text(ok(&eps, &as_admin(&["acl", "list"]), b""));
    assert!(
        list.contains("User:alice") && list.contains("write") && list.contains("orders"),
        "{list}"
    );
    cluster.wait_caught_up(&[1, 2, 3]).await;

    let as_alice = |args: &[&str]| {
        raftlog(&eps, args)
            .env("RAFTLOG_TOKEN", &token)
            .output()
            .unwrap()
    };
    let produced = as_alice(&["produce", "orders", "hello"]);
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let who = as_alice(&["whoami"]);
    assert_eq!(String::from_utf8_lossy(&who.stdout).trim(), "User:alice");
    let denied = as_alice(&["topic", "delete", "orders"]);
    let denied = String::from_utf8_lossy(&denied.stderr);
    assert!(
        denied.contains("PermissionDenied") && denied.contains("raftlog acl add"),
        "{denied}"
    );
    let anonymous = fails(&eps, &["topic", "list"]);
    assert!(
        anonymous.contains("Unauthenticated") && anonymous.contains("--token"),
        "{anonymous}"
    );

    let tokens = text(ok(&eps, &as_admin(&["--json", "token", "list"]), b""));
    let tokens: serde_json::Value = serde_json::from_str(&tokens).unwrap();
    let id = tokens[0]["id"].as_str().unwrap().to_string();
    assert_eq!(tokens[0]["principal"], "User:alice");
    assert!(!tokens.to_string().contains(&token), "list shows no secret");
    let revoke = [&as_admin(&["token", "revoke"])[..], &[id.as_str()]].concat();
    ok(&eps, &revoke, b"");
    cluster.wait_caught_up(&[1, 2, 3]).await;
    let refused = as_alice(&["whoami"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// `raftlog user`: a user made with its first token, listed and described with its ACL entries
/// and quota (creation caps included), held to its cap on topics, and revoked whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_whole_from_the_cli() {
    let (cluster, eps) = auth_cluster().await;
    let token = text(ok(&eps, &as_admin(&["user", "create", "bob"]), b""))
        .trim()
        .to_string();
    ok(
        &eps,
        &as_admin(&[
            "acl",
            "add",
            "--principal",
            "bob",
            "--resource",
            "topic",
            "--name",
            "b-",
            "--prefix",
            "--operation",
            "all",
        ]),
        b"",
    );
    ok(
        &eps,
        &as_admin(&["quota", "set", "--principal", "bob", "--topics-max", "1"]),
        b"",
    );
    let users: serde_json::Value =
        serde_json::from_str(&text(ok(&eps, &as_admin(&["--json", "user", "list"]), b""))).unwrap();
    assert_eq!(users[0]["principal"], "User:bob", "{users}");
    assert_eq!(
        (&users[0]["tokens"], &users[0]["acls"], &users[0]["quota"]),
        (&1.into(), &1.into(), &true.into()),
        "{users}"
    );
    let bob: serde_json::Value = serde_json::from_str(&text(ok(
        &eps,
        &as_admin(&["--json", "user", "describe", "bob"]),
        b"",
    )))
    .unwrap();
    assert_eq!(bob["quota"]["topics_max"], 1, "{bob}");
    assert_eq!(bob["acls"][0]["pattern"], "b-", "{bob}");
    cluster.wait_caught_up(&[1, 2, 3]).await;

    let as_bob = |args: &[&str]| {
        raftlog(&eps, args)
            .env("RAFTLOG_TOKEN", &token)
            .output()
            .unwrap()
    };
    assert!(as_bob(&["topic", "create", "b-1"]).status.success());
    let capped = as_bob(&["topic", "create", "b-2"]);
    let capped = String::from_utf8_lossy(&capped.stderr);
    assert!(
        capped.contains("ResourceExhausted") && capped.contains("at most 1 topics"),
        "{capped}"
    );

    let revoked: serde_json::Value = serde_json::from_str(&text(ok(
        &eps,
        &as_admin(&["--json", "user", "revoke", "bob", "--acls"]),
        b"",
    )))
    .unwrap();
    assert_eq!(revoked["revoked_tokens"].as_array().unwrap().len(), 1);
    assert_eq!(revoked["removed_acls"].as_array().unwrap().len(), 1);
    cluster.wait_caught_up(&[1, 2, 3]).await;
    assert!(!as_bob(&["whoami"]).status.success());
}
