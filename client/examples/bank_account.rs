//! Event sourcing on raftlog: a bank account whose only state is its event log.
//!
//! - The account's events live in one partition of a topic, in order: `opened`, `deposited N`,
//!   `withdrew N`. The current balance is never stored; it is rebuilt by replaying the events.
//! - A command (withdraw 30) is decided against the state rebuilt up to version V (the number of
//!   events read), and its event is appended with `expected_end_offset = V`. If anyone appended in
//!   between, raftlog refuses (FAILED_PRECONDITION, actual end offset attached): the writer
//!   replays the new events and decides again. This is optimistic concurrency: no locks, and no
//!   two decisions are ever made on the same version.
//!
//! Run against a cluster (`scripts/cluster.sh up`):
//!   CARGO_TARGET_DIR=~/.cache/raftlog/target cargo run --release -p raftlog-client \
//!     --example bank_account -- 127.0.0.1:8051,127.0.0.1:8052
//! Several tellers withdraw concurrently from an account holding 1000; the run checks that the
//! balance never went negative and that replaying the log gives the same balance on every node.

use std::time::{SystemTime, UNIX_EPOCH};

use raftlog_client::{pb, record, Client};
use tonic::Code;

/// The aggregate: the state every command is decided against.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Account {
    balance: i64,
    /// Events applied so far = the offset the next event must be written at.
    version: u64,
}

impl Account {
    fn apply(&mut self, event: &str) {
        match event.split_once(' ') {
            Some(("deposited", n)) => self.balance += n.parse::<i64>().expect("amount"),
            Some(("withdrew", n)) => self.balance -= n.parse::<i64>().expect("amount"),
            _ => {} // "opened"
        }
        self.version += 1;
    }

    /// The command handler: the event to append, or why not.
    fn withdraw(&self, amount: i64) -> Result<String, String> {
        if amount > self.balance {
            return Err(format!("insufficient funds: balance {}", self.balance));
        }
        Ok(format!("withdrew {amount}"))
    }
}

/// Rebuilds `account` by replaying the events it has not seen yet.
async fn catch_up(client: &Client, topic: &str, account: &mut Account) -> anyhow::Result<()> {
    loop {
        let request = pb::FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset: account.version,
            ..Default::default()
        };
        let response = client.fetch(request).await?;
        if response.records.is_empty() {
            return Ok(());
        }
        for r in &response.records {
            account.apply(std::str::from_utf8(&r.value)?);
        }
    }
}

/// Appends `event` at exactly `version`; Ok(false) when someone else got there first.
async fn append_at(
    client: &Client,
    topic: &str,
    version: u64,
    event: String,
) -> anyhow::Result<bool> {
    let request = pb::ProduceRequest {
        topic: topic.into(),
        partition: Some(0),
        records: vec![record(event.into_bytes())],
        expected_end_offset: Some(version),
        ..Default::default()
    };
    match client.produce_request(request).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Code::FailedPrecondition && e.end_offset().is_some() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One teller: tries to withdraw `amount` `times` times, replaying and retrying on conflicts.
async fn teller(
    client: Client,
    topic: String,
    amount: i64,
    times: usize,
) -> anyhow::Result<(usize, usize)> {
    let mut account = Account::default();
    let (mut done, mut conflicts) = (0, 0);
    for _ in 0..times {
        loop {
            catch_up(&client, &topic, &mut account).await?;
            let Ok(event) = account.withdraw(amount) else {
                return Ok((done, conflicts)); // the account is empty
            };
            if append_at(&client, &topic, account.version, event).await? {
                done += 1;
                break;
            }
            conflicts += 1; // someone else wrote at this version: replay and decide again
        }
    }
    Ok((done, conflicts))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoints: Vec<String> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8051,127.0.0.1:8052,127.0.0.1:8053".into())
        .split(',')
        .map(String::from)
        .collect();
    let client = Client::new(endpoints.clone())?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let topic = format!("account-{stamp}");
    client.create_topic(&topic, 1).await?;
    assert!(append_at(&client, &topic, 0, "opened".into()).await?);
    assert!(append_at(&client, &topic, 1, "deposited 1000".into()).await?);

    // Four tellers, each talking to a different node first, race to withdraw 30 at a time.
    let mut tellers = Vec::new();
    for t in 0..4 {
        let mut order = endpoints.clone();
        order.rotate_left(t % endpoints.len());
        tellers.push(tokio::spawn(teller(
            Client::new(order)?,
            topic.clone(),
            30,
            20,
        )));
    }
    let (mut withdrawals, mut conflicts) = (0, 0);
    for t in tellers {
        let (done, c) = t.await??;
        withdrawals += done;
        conflicts += c;
    }

    // Replaying the log gives the balance: never negative, exactly 1000 - 30 per withdrawal.
    let mut account = Account::default();
    catch_up(&client, &topic, &mut account).await?;
    println!(
        "{withdrawals} withdrawals of 30, {conflicts} conflicts replayed and retried; balance {} at version {}",
        account.balance, account.version
    );
    anyhow::ensure!(account.balance >= 0, "overdrawn: {account:?}");
    anyhow::ensure!(
        account.balance == 1000 - 30 * withdrawals as i64,
        "lost or doubled events"
    );
    anyhow::ensure!(
        withdrawals == 33,
        "1000 allows 33 withdrawals of 30, not {withdrawals}"
    );
    // Every node that has applied the whole log rebuilds the same account.
    for addr in &endpoints {
        let mut replica = Account::default();
        catch_up(&Client::new([addr.clone()])?, &topic, &mut replica).await?;
        anyhow::ensure!(
            replica.version < account.version || replica == account,
            "node {addr} rebuilt {replica:?}, expected {account:?}"
        );
    }
    client.delete_topic(&topic).await?;
    Ok(())
}
