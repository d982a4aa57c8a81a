//! The CDC tailer and applier: a publication for the table, a logical slot of our own created
//! before the first chunk (permanent, so a crashed run can resume from it), the pgoutput stream decoded and each change routed
//! through the watermark (apply, hold or discard), applied in batches; the slot is confirmed
//! only up to what was applied. Heartbeats (non-transactional logical messages) measure lag,
//! and a marker message tells cut-over when everything before its lock was applied.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::apply::{Change, Statements};
use super::inspect::TableInfo;
use super::pgoutput::{self, Message, Tuple, Value};
use super::shadow::ShadowInfo;
use super::{Names, PgBackend};
use crate::control::Steering;
use crate::engine::progress::Progress;
use crate::engine::replay::{now_micros, reconnect, retry_on_lost_session, Router, TailState};
use crate::error::{Error, PgContext, Result};

const HEARTBEAT: Duration = Duration::from_millis(200);

pub struct Tail {
    shared: Arc<TailState>,
    applier: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    /// Prefix of our logical messages: messages reach every slot of the database.
    prefix: String,
}

impl Tail {
    pub fn check(&self) -> Result<()> {
        self.shared.check()?;
        if self.applier.is_finished() {
            return Err(Error::Stream("the applier stopped".into()));
        }
        Ok(())
    }

    /// How far the applier is behind: the age of the newest heartbeat it has reached.
    pub fn lag(&self) -> Duration {
        self.shared.lag()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Wait until the applier has applied everything before marker `n`.
    pub async fn wait_marker(&self, n: u64, timeout: Duration) -> Result<bool> {
        self.shared.wait_marker(n, timeout, || self.check()).await
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
    // Resuming, the publication and the slot are the interrupted run's: the slot goes on from
    // the last position the applier confirmed.
    let resuming = b.resume.is_some();
    if !resuming {
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
    }

    // On the origin-filtered path the walsender skips the copy's writes undecoded.
    let config = b
        .target
        .replication_config(&names.slot, &names.publication)?
        .with_origin(b.copy_origin.then(|| "none".to_string()));
    let mut repl = ReplicationClient::connect_gated(config.clone())
        .await
        .map_err(|e| Error::pg_stream("opening the replication session", e))?;
    // Permanent, so a run can resume after a crash: every exit path of the run drops it, and
    // `swivel cleanup` drops one a killed run left (showing the WAL it holds).
    if !resuming {
        repl.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            names.slot
        ))
        .await
        .map_err(|e| Error::Stream(format!("creating the replication slot {}: {e}", names.slot)))?;
    }
    start_streaming(&mut repl).await?;

    let (client, pid) = b.target.connect("apply").await?;
    b.pids.push(pid);
    let statements = Statements::prepare(&client, &names, &table, b.shadow()?).await?;
    let (heartbeat_client, pid) = b.target.connect("heartbeat").await?;
    b.pids.push(pid);

    let prefix = format!("swivel:{}", names.slot);
    let shared = Arc::new(TailState::default());
    let applier = Applier {
        repl,
        client,
        statements,
        table,
        router: Router::new(b.watermark.clone()),
        progress: b.progress.clone(),
        steering: b.steering.clone(),
        shared: shared.clone(),
        prefix: prefix.clone(),
        xid: 0,
        in_transaction: false,
        last_commit: None,
        relation_checked: false,
        target: b.target.clone(),
        stream_config: config,
        names: names.clone(),
        shadow: b.shadow()?.clone(),
        retries: b.opts.default_retries,
        first_marker: b.markers,
        stream_lost: 0,
    };
    let applier = tokio::spawn(applier.run());
    let heartbeat = tokio::spawn(heartbeat(
        b.target.clone(),
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

async fn start_streaming(repl: &mut ReplicationClient) -> Result<()> {
    repl.start()
        .await
        .map_err(|e| Error::pg_stream("starting replication", e))?;
    repl.wait_started()
        .await
        .map_err(|e| Error::pg_stream("starting replication", e))
}

/// Emit a heartbeat every [`HEARTBEAT`]. A lost session is opened again (a heartbeat is safe to
/// retry): without heartbeats the lag would only grow, and cut-over would wait for ever.
async fn heartbeat(
    target: super::PgTarget,
    mut client: Client,
    prefix: String,
    shared: Arc<TailState>,
    progress: Arc<Progress>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        if let Err(e) = emit(&client, &prefix, &format!("hb:{}", now_micros())).await {
            tracing::warn!("heartbeat failed: {e}");
            if client.is_closed() {
                match target.connect("heartbeat").await {
                    Ok((fresh, _)) => client = fresh,
                    Err(e) => tracing::warn!("reconnecting the heartbeat: {e}"),
                }
            }
        }
        progress
            .lag_ms
            .store(shared.lag().as_millis() as u64, Relaxed);
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
    router: Router<Change>,
    progress: Arc<Progress>,
    steering: Arc<Steering>,
    shared: Arc<TailState>,
    prefix: String,
    /// The transaction being received.
    xid: u32,
    in_transaction: bool,
    /// End of the newest transaction whose changes are all in `batch` or applied.
    last_commit: Option<Lsn>,
    relation_checked: bool,
    /// For a new apply session when the last one was lost, up to `retries` times a batch.
    target: super::PgTarget,
    /// How the stream was opened, to open it the same way again.
    stream_config: ReplicationConfig,
    names: Names,
    shadow: ShadowInfo,
    retries: u32,
    /// Markers up to this one are an interrupted run's, replayed after `--resume`: not ours.
    first_marker: u64,
    /// Times the stream was lost and opened again, against `retries`.
    stream_lost: u32,
}

impl Applier {
    async fn run(mut self) {
        if let Err(e) = self.stream().await {
            self.shared.fail(e.to_string());
        }
    }

    async fn stream(&mut self) -> Result<()> {
        loop {
            if self.steering.replay_paused() {
                // Throttled: read nothing, so the server keeps the WAL (the throttler bounds
                // how much) and the replica load stays where the operator wants it. The
                // replication client keeps answering the server's keepalives meanwhile.
                self.flush().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let event =
                match tokio::time::timeout(Duration::from_millis(20), self.repl.recv()).await {
                    Err(_) => {
                        // Idle: apply what is due, so a quiet table still converges.
                        self.router.release_held();
                        self.flush().await?;
                        continue;
                    }
                    Ok(Err(e)) => {
                        let e = Error::pg_stream("the replication stream failed", e);
                        if !retry_on_lost_session(&e, "stream", &mut self.stream_lost, self.retries)
                            .await
                        {
                            return Err(e);
                        }
                        self.reopen_stream().await?;
                        continue;
                    }
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
                    if !self.in_transaction && self.router.idle() {
                        self.repl.update_applied_lsn(wal_end);
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
            if self.router.batch().len() >= self.steering.dml_batch_size() {
                self.flush().await?;
            }
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
        self.router.route(&key, change, u64::from(self.xid));
        Ok(())
    }

    async fn on_control(&mut self, content: &str) -> Result<()> {
        if let Some(sent) = content
            .strip_prefix("hb:")
            .and_then(|t| t.parse::<u64>().ok())
        {
            // Apply what came before it first: the lag it measures is then the applier's, and
            // a steady trickle of changes (never idle for the idle flush) is applied promptly.
            self.router.release_held();
            self.flush().await?;
            self.shared.saw_heartbeat(sent, &self.progress);
        } else if let Some(n) = content
            .strip_prefix("cutover:")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|&n| n > self.first_marker)
        {
            self.router.release_held();
            self.flush().await?;
            if self.router.nothing_held() {
                self.shared.reached_marker(n);
            }
        }
        Ok(())
    }

    /// The stream was lost: open it again on the slot, which goes on from the last position
    /// confirmed. Everything after it comes again, so what was received but not applied is
    /// dropped; what was applied after it is applied again, which leaves the same rows.
    async fn reopen_stream(&mut self) -> Result<()> {
        let config = self.stream_config.clone();
        self.repl = reconnect("stream", &mut self.stream_lost, self.retries, || async {
            let mut repl = ReplicationClient::connect_gated(config.clone())
                .await
                .map_err(|e| Error::pg_stream("opening the replication session", e))?;
            start_streaming(&mut repl).await?;
            Ok(repl)
        })
        .await?;
        self.router.forget();
        self.in_transaction = false;
        self.last_commit = None;
        self.relation_checked = false;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let batch = self.router.batch();
        if !batch.is_empty() {
            // Upserts, deletes and read-backs by key: applying the batch again, whether or not
            // the lost session's COMMIT landed, leaves the same rows.
            let mut lost = 0;
            loop {
                match self.statements.apply(&self.client, batch).await {
                    Ok(()) => break,
                    Err(e) if retry_on_lost_session(&e, "apply", &mut lost, self.retries).await => {
                        // Opening the new session can be lost too: another try, counted.
                        let (target, names) = (&self.target, &self.names);
                        let (table, shadow) = (&self.table, &self.shadow);
                        (self.client, self.statements) =
                            reconnect("apply", &mut lost, self.retries, || async {
                                let (client, _) = target.connect("apply").await?;
                                let statements =
                                    Statements::prepare(&client, names, table, shadow).await?;
                                Ok((client, statements))
                            })
                            .await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            self.progress
                .changes_applied
                .fetch_add(batch.len() as u64, Relaxed);
            self.router.clear_batch();
        }
        // Confirm only what was applied: nothing may be held, and the transaction must be whole.
        if self.router.nothing_held() && !self.in_transaction {
            if let Some(lsn) = self.last_commit.take() {
                self.repl.update_applied_lsn(lsn);
                self.stream_lost = 0;
            }
        }
        Ok(())
    }
}
