//! The CDC tailer and applier: a publication for the table, a temporary logical slot of our
//! own created before the first chunk, the pgoutput stream decoded and each change routed
//! through the watermark (apply, hold or discard), applied in batches; the slot is confirmed
//! only up to what was applied. Heartbeats (non-transactional logical messages) measure lag,
//! and a marker message tells cut-over when everything before its lock was applied.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::apply::{Change, Statements};
use super::inspect::TableInfo;
use super::pgoutput::{self, Message, Tuple, Value};
use super::PgBackend;
use crate::error::{Error, PgContext, Result};
use crate::progress::Progress;
use crate::watermark::{Decision, Watermark};

const BATCH: usize = 2000;
const HEARTBEAT: Duration = Duration::from_millis(200);

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the applier shares with the rest of the run.
#[derive(Debug)]
struct Shared {
    failure: Mutex<Option<String>>,
    /// The highest cut-over marker seen, with everything before it applied.
    marker: watch::Sender<u64>,
    /// Send time of the newest heartbeat the applier has reached.
    heartbeat_seen: AtomicU64,
}

impl Shared {
    fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(why);
    }
}

pub struct Tail {
    shared: Arc<Shared>,
    applier: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    /// Prefix of our logical messages: messages reach every slot of the database.
    prefix: String,
}

impl Tail {
    pub fn check(&self) -> Result<()> {
        let failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match failure.as_ref() {
            Some(why) => Err(Error::Stream(why.clone())),
            None if self.applier.is_finished() => Err(Error::Stream("the applier stopped".into())),
            None => Ok(()),
        }
    }

    /// How far the applier is behind: the age of the newest heartbeat it has reached.
    pub fn lag(&self) -> Duration {
        let seen = self.shared.heartbeat_seen.load(Relaxed);
        Duration::from_micros(now_micros().saturating_sub(seen))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Wait until the applier has applied everything before marker `n`.
    pub async fn wait_marker(&self, n: u64, timeout: Duration) -> Result<bool> {
        let mut rx = self.shared.marker.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if *rx.borrow_and_update() >= n {
                    return Ok(());
                }
                self.check()?;
                // Wake at least every 50ms to notice a failed applier.
                let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }

    pub fn stop(&self) {
        self.heartbeat.abort();
        self.applier.abort();
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Create the publication and the slot, and start the applier and the heartbeat.
pub async fn start(b: &mut PgBackend) -> Result<()> {
    let names = b.names()?.clone();
    let table = b.table()?.clone();
    // The publication must exist before the slot: decoding looks it up as of each change.
    b.ctl
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            super::quote_ident(&names.publication),
            names.source()
        ))
        .await
        .ctx("creating the publication")?;
    b.created_publication = true;

    let config = b
        .target
        .replication_config(&names.slot, &names.publication)?;
    let mut repl = ReplicationClient::connect_gated(config)
        .await
        .map_err(|e| Error::Stream(format!("opening the replication session: {e}")))?;
    // Temporary: the server drops it when our session ends, even if this process dies.
    repl.simple_query(&format!(
        "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        names.slot
    ))
    .await
    .map_err(|e| Error::Stream(format!("creating the replication slot {}: {e}", names.slot)))?;
    repl.start()
        .await
        .map_err(|e| Error::Stream(format!("starting replication: {e}")))?;
    repl.wait_started()
        .await
        .map_err(|e| Error::Stream(format!("starting replication: {e}")))?;

    let (client, pid) = b.target.connect("apply").await?;
    b.pids.push(pid);
    let statements = Statements::prepare(&client, &names, &table, b.shadow()?).await?;
    let (heartbeat_client, pid) = b.target.connect("heartbeat").await?;
    b.pids.push(pid);

    let prefix = format!("swivel:{}", names.slot);
    let shared = Arc::new(Shared {
        failure: Mutex::new(None),
        marker: watch::Sender::new(0),
        heartbeat_seen: AtomicU64::new(now_micros()),
    });
    let applier = Applier {
        repl,
        client,
        statements,
        table,
        watermark: b.watermark.clone(),
        progress: b.progress.clone(),
        shared: shared.clone(),
        prefix: prefix.clone(),
        xid: 0,
        in_transaction: false,
        batch: Vec::new(),
        held: Vec::new(),
        held_epoch: 0,
        last_commit: None,
        relation_checked: false,
    };
    let applier = tokio::spawn(applier.run());
    let heartbeat = tokio::spawn(heartbeat(
        heartbeat_client,
        prefix.clone(),
        shared.clone(),
        b.progress.clone(),
    ));
    b.tail = Some(Tail {
        shared,
        applier,
        heartbeat,
        prefix,
    });
    Ok(())
}

async fn heartbeat(client: Client, prefix: String, shared: Arc<Shared>, progress: Arc<Progress>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        if let Err(e) = emit(&client, &prefix, &format!("hb:{}", now_micros())).await {
            tracing::warn!("heartbeat failed: {e}");
        }
        let seen = shared.heartbeat_seen.load(Relaxed);
        progress
            .lag_ms
            .store(now_micros().saturating_sub(seen) / 1000, Relaxed);
    }
}

/// Put a message into the stream, in a transaction of its own committed with a WAL flush: a
/// message alone waits for some later flush before the walsender may send it (PostgreSQL 15's
/// `pg_logical_emit_message` cannot flush), which would delay it by up to wal_writer_delay.
/// The transaction commits after everything it must follow, so it arrives after all of it.
pub async fn emit(client: &Client, prefix: &str, content: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL synchronous_commit = on; SELECT pg_logical_emit_message(true, {}, {}); COMMIT",
            super::quote_literal(prefix),
            super::quote_literal(content)
        ))
        .await
        .ctx("emitting a stream message")
}

struct Applier {
    repl: ReplicationClient,
    client: Client,
    statements: Statements,
    table: TableInfo,
    watermark: Arc<Watermark>,
    progress: Arc<Progress>,
    shared: Arc<Shared>,
    prefix: String,
    /// The transaction being received.
    xid: u32,
    in_transaction: bool,
    /// Changes decided "apply", in stream order, not yet applied.
    batch: Vec<Change>,
    /// Changes to keys of the chunk being copied, due when it commits.
    held: Vec<Change>,
    held_epoch: u64,
    /// End of the newest transaction whose changes are all in `batch` or applied.
    last_commit: Option<Lsn>,
    relation_checked: bool,
}

impl Applier {
    async fn run(mut self) {
        if let Err(e) = self.stream().await {
            self.shared.fail(e.to_string());
        }
    }

    async fn stream(&mut self) -> Result<()> {
        loop {
            let event = match tokio::time::timeout(Duration::from_millis(20), self.repl.recv())
                .await
            {
                Err(_) => {
                    // Idle: apply what is due, so a quiet table still converges.
                    self.release_held();
                    self.flush().await?;
                    continue;
                }
                Ok(Err(e)) => return Err(Error::Stream(format!("replication stream failed: {e}"))),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(event))) => event,
            };
            match event {
                ReplicationEvent::Begin { xid, .. } => {
                    self.xid = xid;
                    self.in_transaction = true;
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let message =
                        pgoutput::decode(data).map_err(|e| Error::Stream(e.to_string()))?;
                    self.on_message(message)?;
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    self.in_transaction = false;
                    self.last_commit = Some(end_lsn);
                }
                ReplicationEvent::Message {
                    prefix, content, ..
                } if prefix == self.prefix => {
                    self.on_control(&String::from_utf8_lossy(&content)).await?;
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if !self.in_transaction && self.batch.is_empty() && self.held.is_empty() {
                        self.repl.update_applied_lsn(wal_end);
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
            if self.batch.len() >= BATCH {
                self.flush().await?;
            }
        }
    }

    /// Move held changes to the batch once the chunk they waited for has committed.
    fn release_held(&mut self) {
        if !self.held.is_empty() && self.watermark.view().epoch() != self.held_epoch {
            self.batch.append(&mut self.held);
        }
    }

    fn on_message(&mut self, message: Message) -> Result<()> {
        let relation = match &message {
            Message::Relation { id, .. }
            | Message::Insert { relation: id, .. }
            | Message::Update { relation: id, .. }
            | Message::Delete { relation: id, .. } => *id,
            Message::Truncate { .. } => {
                return Err(Error::Stream(
                    "the table was truncated during the migration; the run stops and the original table is left as it is".into(),
                ))
            }
            Message::Other(_) => return Ok(()),
        };
        if relation != self.table.oid {
            return Ok(());
        }
        match message {
            Message::Relation { columns, .. } => {
                let sent: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                let expected: Vec<&str> =
                    self.table.columns.iter().map(|c| c.name.as_str()).collect();
                if sent != expected {
                    return Err(Error::Stream(format!(
                        "the table's columns changed during the migration (now {}); the run stops",
                        sent.join(", ")
                    )));
                }
                self.relation_checked = true;
            }
            Message::Insert { new, .. } => self.route_row(&new)?,
            Message::Update { old, new, .. } => {
                let new_key = self.key_of(&new)?;
                if let Some(old) = old {
                    let old_key = self.key_of(&old)?;
                    if old_key != new_key {
                        // A key change: a delete of the old key and an upsert of the new one,
                        // each judged against the watermark on its own.
                        self.route(Change::Delete(old_key))?;
                    }
                }
                self.route_row(&new)?;
            }
            Message::Delete { old, .. } => {
                let key = self.key_of(&old)?;
                self.route(Change::Delete(key))?;
            }
            Message::Truncate { .. } | Message::Other(_) => {}
        }
        Ok(())
    }

    /// The key values of a tuple, as text.
    fn key_of(&self, tuple: &Tuple) -> Result<Vec<String>> {
        self.table
            .key
            .iter()
            .map(|k| match tuple.get(k.position) {
                Some(Value::Text(v)) => Ok(v.clone()),
                _ => Err(Error::Stream(format!(
                    "a change came without its key column {}",
                    k.name
                ))),
            })
            .collect()
    }

    fn route_row(&mut self, new: &Tuple) -> Result<()> {
        if !self.relation_checked {
            return Err(Error::Stream(
                "a row arrived before its relation description".into(),
            ));
        }
        if new.len() != self.table.columns.len() {
            return Err(Error::Stream(
                "a row arrived with a different column count".into(),
            ));
        }
        let change = if new.contains(&Value::Unchanged) {
            Change::ReadBack(self.key_of(new)?)
        } else {
            Change::Upsert(
                new.iter()
                    .map(|v| match v {
                        Value::Text(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            )
        };
        self.route(change)
    }

    fn route(&mut self, change: Change) -> Result<()> {
        let key_texts = match &change {
            Change::Upsert(values) => self
                .table
                .key
                .iter()
                .map(|k| {
                    values
                        .get(k.position)
                        .cloned()
                        .flatten()
                        .unwrap_or_default()
                })
                .collect(),
            Change::ReadBack(key) | Change::Delete(key) => key.clone(),
        };
        let key = self.table.parse_key(key_texts.iter().map(String::as_str))?;
        let mut view = self.watermark.view();
        if !self.held.is_empty() && view.epoch() != self.held_epoch {
            self.batch.append(&mut self.held);
        }
        match view.decide(&key) {
            Decision::Apply => self.batch.push(change),
            Decision::Hold => {
                self.held_epoch = view.epoch();
                self.held.push(change);
            }
            Decision::Discard => view.note_discard(u64::from(self.xid)),
        }
        Ok(())
    }

    async fn on_control(&mut self, content: &str) -> Result<()> {
        if let Some(sent) = content
            .strip_prefix("hb:")
            .and_then(|t| t.parse::<u64>().ok())
        {
            self.shared.heartbeat_seen.fetch_max(sent, Relaxed);
            self.progress
                .lag_ms
                .store(now_micros().saturating_sub(sent) / 1000, Relaxed);
        } else if let Some(n) = content
            .strip_prefix("cutover:")
            .and_then(|t| t.parse::<u64>().ok())
        {
            self.release_held();
            self.flush().await?;
            if self.held.is_empty() {
                self.shared.marker.send_replace(n);
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if !self.batch.is_empty() {
            self.statements.apply(&self.client, &self.batch).await?;
            self.progress
                .changes_applied
                .fetch_add(self.batch.len() as u64, Relaxed);
            self.batch.clear();
        }
        // Confirm only what was applied: nothing may be held, and the transaction must be whole.
        if self.held.is_empty() && !self.in_transaction {
            if let Some(lsn) = self.last_commit.take() {
                self.repl.update_applied_lsn(lsn);
            }
        }
        Ok(())
    }
}
