//! `raftlog`: the command-line tool. Aligned columns for people, `--json` for programs, errors as
//! `error:` plus a `hint:` with the fix.
//!
//! Modules by command area: `topic`, `produce`, `consume`, `group`, `cluster`, `access` (tokens,
//! ACLs), `cert`, `bench`; and what
//! they share: `codec` (key/value encodings, the JSON form), `format` (`consume --format`),
//! `units` (durations, sizes, offsets, endpoints), `diagnose` (errors and cluster verdicts),
//! `output` (stdout, tables).

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use raftlog_client::{Client, RetryPolicy, TlsOptions};

mod access;
mod bench;
mod cert;
mod cluster;
mod codec;
mod consume;
mod diagnose;
mod format;
mod group;
mod output;
mod produce;
mod queue;
mod topic;
mod units;
mod user;

const EXAMPLES: &str = "\
Examples:
  raftlog topic create orders --partitions 3 --retention 7d
  raftlog produce orders -k user-42 clicked paid
  tail -f app.log | raftlog produce logs
  raftlog consume orders -o -10 -f
  raftlog consume orders --group billing -f
  raftlog cluster status

TLS: raftlog --tls-ca pki/ca.pem [--tls-cert pki/alice.pem --tls-key pki/alice-key.pem] cluster status
Auth: raftlog --token $(cat admin.token) token create --principal alice --expires-in 90d
      raftlog acl add --principal alice --resource topic --name orders- --prefix --operation write
Environment: RAFTLOG_ENDPOINTS, RAFTLOG_TLS_CA, RAFTLOG_CERT, RAFTLOG_KEY, RAFTLOG_TOKEN (as the flags).
Exit status: 0 success, 1 error (or `cluster status` unhealthy), 2 wrong usage.";

#[derive(Parser)]
#[command(
    name = "raftlog",
    version,
    about = "Command-line client of a raftlog cluster: topics, produce, consume, consumer groups, cluster operations",
    after_help = EXAMPLES
)]
struct Cli {
    /// The cluster's nodes, as comma-separated gRPC host:port (port 8051 when left out).
    #[arg(
        long,
        global = true,
        env = "RAFTLOG_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053",
        value_name = "HOST:PORT,..."
    )]
    endpoints: Vec<String>,
    /// Print JSON for programs instead of text for people (errors too, on stderr).
    #[arg(long, global = true)]
    json: bool,
    /// How long a command waits for the cluster (a leader, a quorum, a node that answers)
    /// before it gives up, e.g. 5s, 1m.
    #[arg(long, global = true, value_parser = units::duration, default_value = "15s", value_name = "DURATION")]
    timeout: Duration,
    /// PEM file of the cluster's CA: connect over TLS and trust nodes it signed.
    #[arg(long, global = true, env = "RAFTLOG_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM file of this client's certificate (for nodes that require one; with --tls-key and
    /// --tls-ca).
    #[arg(
        long,
        visible_alias = "cert",
        global = true,
        env = "RAFTLOG_CERT",
        value_name = "FILE"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM file of the private key of --tls-cert. (Not `--key`: that is a record's key in
    /// `produce`.)
    #[arg(long, global = true, env = "RAFTLOG_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// Bearer token sent with every call (`raftlog token create` makes one), for clusters with
    /// auth on.
    #[arg(
        long,
        global = true,
        env = "RAFTLOG_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCmd),
    /// Append records: values from arguments, or from stdin as they arrive.
    Produce(produce::ProduceArgs),
    /// Read records, from every partition or one, from any position; follow new ones.
    Consume(consume::ConsumeArgs),
    /// Consumer groups: committed offsets and lag; seek, reset, commit, delete.
    #[command(subcommand)]
    Group(group::GroupCmd),
    /// Queue groups: workers share a topic's records one by one (receive, ack, release, reject).
    #[command(subcommand)]
    Queue(queue::QueueCmd),
    /// Cluster health, membership and maintenance.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Users (principals) whole: create (a first token), list, describe, revoke all tokens.
    #[command(subcommand)]
    User(user::UserCmd),
    /// Bearer tokens: create (printed once), list, revoke.
    #[command(subcommand)]
    Token(access::TokenCmd),
    /// ACL entries: who may do what on which topics, groups, queues and the cluster.
    #[command(subcommand)]
    Acl(access::AclCmd),
    /// Quotas per principal: produce and fetch bytes/s, requests/s, on each node.
    #[command(subcommand)]
    Quota(access::QuotaCmd),
    /// Print the principal the cluster takes this client for.
    Whoami,
    /// Make a cluster CA and node and client certificates (for TLS; no openssl needed).
    #[command(subcommand)]
    Cert(cert::CertCmd),
    /// Load generators; each prints one JSON line of results.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Print a shell completion script, e.g. `raftlog completion bash > /etc/bash_completion.d/raftlog`.
    Completion {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What every command gets: the client and the global options.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
    pub timeout: Duration,
}

fn main() -> ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // As the node's runtime: answers (and `bench`'s requests) that complete together leave in
    // one write (.cargo/config.toml).
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    match runtime.build() {
        Ok(runtime) => runtime.block_on(cli_main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cli_main() -> ExitCode {
    let cli = Cli::parse();
    let as_json = cli.json;
    // Certificates are made without a cluster (and before the files the TLS flags name exist).
    if let Command::Cert(cmd) = &cli.command {
        return match cert::run(cmd.clone(), as_json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                diagnose::explain(None, e).await.print(as_json);
                ExitCode::FAILURE
            }
        };
    }
    let client = match make_client(&cli) {
        Ok(client) => client,
        Err(e) => {
            diagnose::explain(None, e).await.print(as_json);
            return ExitCode::FAILURE;
        }
    };
    let ctx = Ctx {
        client: client.clone(),
        json: cli.json,
        timeout: cli.timeout,
    };
    match run(ctx, cli.command).await {
        Ok(code) => code,
        Err(e) => {
            diagnose::explain(Some(&client), e).await.print(as_json);
            ExitCode::FAILURE
        }
    }
}

fn make_client(cli: &Cli) -> anyhow::Result<Client> {
    let endpoints = cli
        .endpoints
        .iter()
        .map(|e| units::endpoint(e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let retry = RetryPolicy {
        deadline: cli.timeout,
        ..RetryPolicy::default()
    };
    let mut client = Client::new(endpoints)?.with_retry(retry);
    if let Some(token) = &cli.token {
        client = client.with_token(token)?;
    }
    match (&cli.tls_ca, &cli.tls_cert, &cli.tls_key) {
        (None, None, None) => Ok(client),
        (None, _, _) => anyhow::bail!(
            "--tls-cert and --tls-key need --tls-ca (RAFTLOG_TLS_CA): the CA that signed the nodes"
        ),
        (Some(ca), cert, key) => Ok(client.with_tls(&TlsOptions {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })?),
    }
}

async fn run(ctx: Ctx, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Topic(cmd) => topic::run(&ctx, cmd).await?,
        Command::Produce(args) => produce::run(&ctx, args).await?,
        Command::Consume(args) => consume::run(&ctx, args).await?,
        Command::Group(cmd) => group::run(&ctx, cmd).await?,
        Command::Queue(cmd) => queue::run(&ctx, cmd).await?,
        Command::Cluster(cmd) => return cluster::run(&ctx, cmd).await,
        Command::User(cmd) => user::user(&ctx, cmd).await?,
        Command::Token(cmd) => access::token(&ctx, cmd).await?,
        Command::Acl(cmd) => access::acl(&ctx, cmd).await?,
        Command::Quota(cmd) => access::quota(&ctx, cmd).await?,
        Command::Whoami => access::whoami(&ctx).await?,
        Command::Bench(cmd) => bench::run(&ctx.client, cmd, ctx.json).await?,
        Command::Cert(_) => unreachable!("run before a client is made"),
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "raftlog", &mut script);
            output::bytes(&script);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument and command has a help line (the review found a dozen empty ones).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path.trim() != "raftlog" {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let builtin = ["help", "version"].contains(&arg.get_id().as_str());
                if arg.get_help().is_none() && !builtin && !arg.is_hide_set() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:#?}");
        Cli::command().debug_assert();
    }
}
