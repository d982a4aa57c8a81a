//! The binlog tailer and applier: connect as a replica with a server id of our own, from the
//! position taken before the first chunk; decode row events of the table with its own schema;
//! route each change through the watermark; apply in batches. Heartbeats written to the
//! changelog table every 100 ms come back through the binlog and measure the lag; the cut-over
//! marker, written the same way, tells cut-over that everything before its lock was applied.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::apply::{Change, Statements};
use super::inspect::TableInfo;
use super::values::key_part;
use super::{MyBackend, Names};
use crate::control::Steering;
use crate::engine::progress::Progress;
use crate::engine::replay::{now_micros, reconnect, retry_on_lost_session, Router, TailState};
use crate::engine::watermark::Key;
use crate::error::{Error, MyContext, Result};

const HEARTBEAT: Duration = Duration::from_millis(100);

/// Changelog rows: one per purpose, replaced in place.
const HEARTBEAT_ID: u32 = 1;
const MARKER_ID: u32 = 2;
/// The checkpoint row (its `state` holds the checkpoint's JSON; see [`super::state`]).
pub const CHECKPOINT_ID: u32 = 5;

/// What cut-over tells an applier that stopped at a marker.
#[derive(Clone, Copy, Debug, Default)]
struct Control {
    /// Markers up to this one are done with: go on reading.
    resumed: u64,
    /// The tables were swapped: stop.
    stop: bool,
}

pub struct Tail {
    state: Arc<TailState>,
    /// File and position after the newest transaction the applier applied with nothing held:
    /// where a resumed run's stream may start.
    applied: Arc<Mutex<(String, u64)>>,
    control: watch::Sender<Control>,
    applier: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

impl Tail {
    pub fn check(&self) -> Result<()> {
        self.state.check()?;
        if self.applier.is_finished() && !self.control.borrow().stop {
            return Err(Error::Stream("the applier stopped".into()));
        }
        Ok(())
    }

    pub fn lag(&self) -> Duration {
        self.state.lag()
    }

    /// Where a resumed run may start the stream: every change before it that was due is applied.
    pub fn applied_position(&self) -> String {
        let (file, position) = &*self.applied.lock().unwrap_or_else(|p| p.into_inner());
        format!("{file}:{position}")
    }

    /// Wait until the applier has applied everything before marker `n` and stopped there.
    pub async fn wait_marker(&self, n: u64, timeout: Duration) -> Result<bool> {
        self.state.wait_marker(n, timeout, || self.check()).await
    }

    /// The cut-over attempt that wrote marker `n` failed: the applier goes on past it.
    pub fn resume(&self, n: u64) {
        self.control.send_modify(|c| c.resumed = c.resumed.max(n));
    }

    /// The tables were swapped: events after the marker belong to the new table.
    pub fn finish(&self) {
        self.control.send_modify(|c| c.stop = true);
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

/// Write a changelog row; it reaches the applier through the binlog.
pub async fn emit(conn: &mut Conn, names: &Names, id: u32, hint: &str, value: u64) -> Result<()> {
    conn.exec_drop(
        format!(
            "REPLACE INTO {} (id, hint, value) VALUES (?, ?, ?)",
            names.changelog_q()
        ),
        (id, hint, value),
    )
    .await
    .my_ctx(format!("writing the {hint} to the changelog"))
}

pub async fn emit_marker(conn: &mut Conn, names: &Names, n: u64) -> Result<()> {
    emit(conn, names, MARKER_ID, "cutover", n).await
}

/// A server id for our replica connection: high, so it does not collide with a real
/// replica's, and different for every stream, ours or a concurrent run's. The server ends a
/// dump whose id a newer one reuses, with an error that is not a lost connection: two streams
/// opened in the same microsecond (two runs in one process) once took the same time-based id,
/// and one run failed.
fn server_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static BASE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(rand::random::<u32>);
    0x4000_0000 | (base.wrapping_add(NEXT.fetch_add(1, Relaxed)) & 0x3fff_ffff)
}

pub async fn start(b: &mut MyBackend) -> Result<()> {
    let names = b.names.clone();
    let table = b.table()?.clone();
    let statements = Statements::new(&names, &table, b.shadow()?);

    let (file, position) = match &b.resume {
        // The interrupted run's applied position (checked by the plan).
        Some(checkpoint) => parse_position(&checkpoint.stream)?,
        None => {
            let status: Option<mysql_async::Row> = b
                .ctl
                .query_first(b.binlog_status)
                .await
                .my_ctx("reading the binlog position")?;
            status
                .and_then(|row| Some((row.get(0)?, row.get(1)?)))
                .ok_or_else(|| {
                    Error::refused(format!(
                        "{} shows no binlog: the binary log is off (log_bin)",
                        b.binlog_status
                    ))
                })?
        }
    };

    let (stream, id) = open_stream(&b.target, b.mariadb, &file, position).await?;
    b.conn_ids.push(id);

    let mut heartbeat_conn = b.session("heartbeat").await?;
    // A transaction binlogged before `position` may not be visible yet; the server commits in
    // binlog order, so once this write commits, the first chunk's snapshot sees it.
    emit(
        &mut heartbeat_conn,
        &names,
        HEARTBEAT_ID,
        "heartbeat",
        now_micros(),
    )
    .await?;
    let apply_conn = b.session("apply").await?;

    let state = Arc::new(TailState::default());
    let applied = Arc::new(Mutex::new((file.clone(), position)));
    let (control, control_rx) = watch::channel(Control::default());
    let applier = Applier {
        stream,
        conn: apply_conn,
        statements,
        table,
        names: names.clone(),
        router: Router::new(b.watermark.clone()),
        progress: b.progress.clone(),
        steering: b.steering.clone(),
        state: state.clone(),
        control: control_rx,
        target: b.target.clone(),
        retries: b.opts.default_retries,
        txn: 0,
        first_marker: b.markers,
        mariadb: b.mariadb,
        lost: 0,
        tables: HashMap::new(),
        file,
        before_format: true,
        in_transaction: false,
        last_commit: None,
        applied: applied.clone(),
    };
    let applier = tokio::spawn(applier.run());
    let heartbeat = tokio::spawn(heartbeat(
        b.target.clone(),
        heartbeat_conn,
        names,
        state.clone(),
        b.progress.clone(),
    ));
    b.tail = Some(Tail {
        state,
        applied,
        control,
        applier,
        heartbeat,
    });
    Ok(())
}

/// A replica connection streaming the binlog from `file`:`position`, and its connection id.
async fn open_stream(
    target: &super::MyTarget,
    mariadb: bool,
    file: &str,
    position: u64,
) -> Result<(BinlogStream, u32)> {
    let mut conn = target.connect_raw("binlog").await?;
    let id = conn.id();
    if mariadb {
        // Say we read MariaDB's GTID events. Otherwise the server rewrites each into an event
        // an old replica knows, and fails on some ("Failed to replace GTID event with
        // backwards-compatible event: corrupt event", seen on a group-committed GTID event of a
        // statement-format transaction): the stream would end mid-run.
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .my_ctx("declaring the replica's capabilities")?;
    }
    // While throttled the applier reads nothing and the server's writes to this connection
    // block; with the default net_write_timeout (60s) the server would drop a replica paused
    // for a minute. The dump thread runs in this session, so its timeout is ours to set.
    conn.query_drop("SET SESSION net_write_timeout = 31536000")
        .await
        .my_ctx("letting the binlog stream wait while throttled")?;
    let stream = conn
        .get_binlog_stream(
            BinlogStreamRequest::new(server_id())
                .with_filename(file.as_bytes())
                .with_pos(position),
        )
        .await
        .my_ctx(format!("opening the binlog stream at {file}:{position}"))?;
    Ok((stream, id))
}

/// Write a heartbeat every [`HEARTBEAT`]. A failed write is tried again on a fresh session
/// (a heartbeat is safe to retry): without heartbeats the lag would only grow, and cut-over
/// would wait for ever.
async fn heartbeat(
    target: super::MyTarget,
    mut conn: Conn,
    names: Names,
    state: Arc<TailState>,
    progress: Arc<Progress>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        if let Err(e) = emit(&mut conn, &names, HEARTBEAT_ID, "heartbeat", now_micros()).await {
            tracing::warn!("heartbeat failed: {e}");
            match target.connect("heartbeat").await {
                Ok(fresh) => conn = fresh,
                Err(e) => tracing::warn!("reconnecting the heartbeat: {e}"),
            }
        }
        progress
            .lag_ms
            .store(state.lag().as_millis() as u64, Relaxed);
    }
}

/// Which table a binlog table id stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Source,
    Changelog,
    Other,
}

struct Applier {
    stream: BinlogStream,
    conn: Conn,
    statements: Statements,
    table: TableInfo,
    names: Names,
    router: Router<Change>,
    progress: Arc<Progress>,
    steering: Arc<Steering>,
    state: Arc<TailState>,
    control: watch::Receiver<Control>,
    /// For a new apply session when the last one was lost, up to `retries` times a batch.
    target: super::MyTarget,
    retries: u32,
    /// Transactions seen (BEGIN events), to tell the watermark which one a discard came from.
    txn: u64,
    /// Markers up to this one are an interrupted run's, replayed after `--resume`: not ours.
    first_marker: u64,
    mariadb: bool,
    /// Times the stream was lost and opened again, against `retries`.
    lost: u32,
    tables: HashMap<u64, Target>,
    /// The binlog file being read (rotate events name the next).
    file: String,
    /// No format description has come yet on this stream: its rotate event is the artificial
    /// one naming the file it was opened at, and the name may end in checksum bytes (one in
    /// ~25 of those starts with an ASCII digit, which the name's digits would swallow).
    before_format: bool,
    in_transaction: bool,
    /// End of the newest transaction whose changes are all in the batch or applied.
    last_commit: Option<u64>,
    applied: Arc<Mutex<(String, u64)>>,
}

impl Applier {
    async fn run(mut self) {
        match self.stream_events().await {
            Ok(()) => {}
            Err(e) => self.state.fail(e.to_string()),
        }
    }

    async fn stream_events(&mut self) -> Result<()> {
        loop {
            if self.steering.replay_paused() {
                // Throttled: read nothing; the binlog waits on the server.
                self.flush().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let event =
                match tokio::time::timeout(Duration::from_millis(20), self.stream.next()).await {
                    Err(_) => {
                        // Idle: apply what is due, so a quiet table still converges.
                        self.router.release_held();
                        self.flush().await?;
                        continue;
                    }
                    Ok(None) => {
                        let e = Error::Database {
                            context: "reading the binlog".into(),
                            message: "the stream ended".into(),
                            code: None,
                            lost: true,
                        };
                        self.stream_lost(e).await?;
                        continue;
                    }
                    Ok(Some(Err(e))) => {
                        let context = format!("reading the binlog ({})", self.file);
                        self.stream_lost(Error::my(context, e)).await?;
                        continue;
                    }
                    Ok(Some(Ok(event))) => event,
                };
            let data = event
                .read_data()
                .map_err(|e| Error::Stream(format!("decoding a binlog event: {e}")))?;
            match data {
                // The stream was opened at `self.file`: its artificial rotate says nothing new.
                Some(EventData::RotateEvent(_)) if self.before_format => {}
                Some(EventData::RotateEvent(r)) => self.file = next_file(&self.file, &r.name()),
                Some(EventData::FormatDescriptionEvent(_)) => self.before_format = false,
                Some(EventData::XidEvent(_)) => {
                    self.in_transaction = false;
                    self.last_commit = Some(u64::from(event.header().log_pos()));
                }
                Some(EventData::QueryEvent(q)) => {
                    let sql = q.query();
                    if sql == "BEGIN" {
                        self.txn += 1;
                        self.in_transaction = true;
                    } else if sql == "COMMIT" {
                        self.in_transaction = false;
                        self.last_commit = Some(u64::from(event.header().log_pos()));
                    } else if changes_table(&sql, &self.names.table) {
                        return Err(Error::Stream(format!(
                            "`{sql}` ran on the table during the migration; the run stops and \
                             the original table is left as it is"
                        )));
                    } else if mentions_table(&q.schema(), &sql, &self.names) {
                        return Err(statement_write(&sql, &self.names.table));
                    }
                }
                Some(EventData::ExecuteLoadQueryEvent(q))
                    if mentions_table(&q.schema(), &q.query(), &self.names) =>
                {
                    return Err(statement_write(&q.query(), &self.names.table));
                }
                Some(EventData::RowsEvent(rows)) if !self.on_rows(&rows).await? => {
                    return Ok(());
                }
                Some(EventData::TransactionPayloadEvent(_)) => {
                    return Err(Error::Stream(
                        "the binlog holds a compressed transaction (binlog_transaction_compression \
                         is ON), whose row changes swivel cannot read yet: the run stops, the \
                         original table is untouched. SET GLOBAL binlog_transaction_compression \
                         = OFF (sessions pick it up when they reconnect) and run again"
                            .into(),
                    ));
                }
                Some(EventData::UnknownEvent) => {
                    return Err(unknown_event(event.header().event_type_raw()))
                }
                None => match event.header().event_type_raw() {
                    // MariaDB's GTID event opens a transaction (there is no BEGIN then).
                    162 => {
                        self.txn += 1;
                        self.in_transaction = true;
                    }
                    // MariaDB's annotate-rows, binlog checkpoint and GTID list events: nothing
                    // to replay.
                    160 | 161 | 163 => {}
                    // MariaDB's compressed query and rows events (log_bin_compress).
                    165..=171 => {
                        return Err(Error::Stream(
                            "the binlog holds compressed events (log_bin_compress is ON), which \
                             swivel cannot read yet: the run stops, the original table is \
                             untouched. SET GLOBAL log_bin_compress = OFF and run again"
                                .into(),
                        ));
                    }
                    other => return Err(unknown_event(other)),
                },
                _ => {}
            }
            if self.router.batch().len() >= self.steering.dml_batch_size() {
                self.flush().await?;
            }
        }
    }

    fn target(&mut self, table_id: u64) -> Result<Target> {
        if let Some(t) = self.tables.get(&table_id) {
            return Ok(*t);
        }
        let tme = self
            .stream
            .get_tme(table_id)
            .ok_or_else(|| Error::Stream(format!("rows of unknown table id {table_id}")))?;
        let target = if tme.database_name() != self.names.db {
            Target::Other
        } else if tme.table_name() == self.names.table {
            Target::Source
        } else if tme.table_name() == self.names.changelog {
            Target::Changelog
        } else {
            Target::Other
        };
        self.tables.insert(table_id, target);
        Ok(target)
    }

    /// False once cut-over has swapped the tables: stop reading.
    async fn on_rows(&mut self, rows: &RowsEventData<'_>) -> Result<bool> {
        let target = self.target(rows.table_id())?;
        if target == Target::Other {
            return Ok(true);
        }
        let tme = self
            .stream
            .get_tme(rows.table_id())
            .ok_or_else(|| Error::Stream("a rows event without its table map".into()))?;
        let mut decoded = Vec::new();
        for row in rows.rows(tme) {
            let (before, after) =
                row.map_err(|e| Error::Stream(format!("decoding a binlog row: {e}")))?;
            decoded.push((before, after));
        }
        match target {
            Target::Source => {
                for (before, after) in decoded {
                    self.on_source_row(before, after)?;
                }
            }
            Target::Changelog => {
                for (_, after) in decoded {
                    if let Some(after) = after {
                        if !self.on_changelog_row(&after).await? {
                            return Ok(false);
                        }
                    }
                }
            }
            Target::Other => {}
        }
        Ok(true)
    }

    fn values(&self, row: &BinlogRow) -> Result<Vec<Value>> {
        if row.len() != self.table.columns.len() {
            return Err(Error::Stream(format!(
                "a row of {} columns arrived for a table of {}: the table's columns changed \
                 during the migration; the run stops",
                row.len(),
                self.table.columns.len()
            )));
        }
        self.table
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| match row.as_ref(i) {
                Some(BinlogValue::Value(v)) => Ok(column.kind.fix(v.clone())),
                _ => Err(Error::Stream(format!(
                    "column {} came without a plain value (binlog_row_image must be FULL)",
                    column.name
                ))),
            })
            .collect()
    }

    fn key_of(&self, values: &[Value]) -> Result<(Key, Vec<Value>)> {
        let raw: Vec<Value> = self.table.key.iter().map(|&i| values[i].clone()).collect();
        let key = raw
            .iter()
            .map(|v| {
                key_part(v).ok_or_else(|| Error::Stream(format!("an unexpected key value {v:?}")))
            })
            .collect::<Result<Key>>()?;
        Ok((key, raw))
    }

    fn on_source_row(&mut self, before: Option<BinlogRow>, after: Option<BinlogRow>) -> Result<()> {
        let txn = self.txn;
        let old = before.map(|r| self.values(&r)).transpose()?;
        let new = after.map(|r| self.values(&r)).transpose()?;
        let old_key = old.as_deref().map(|v| self.key_of(v)).transpose()?;
        match new {
            Some(new) => {
                let (key, _) = self.key_of(&new)?;
                if let Some((old_key, raw)) = old_key {
                    if old_key != key {
                        // A key change: a delete of the old key and an upsert of the new one,
                        // each judged against the watermark on its own.
                        self.router.route(&old_key, Change::Delete(raw), txn);
                    }
                }
                self.router.route(&key, Change::Upsert(new), txn);
            }
            None => {
                if let Some((key, raw)) = old_key {
                    self.router.route(&key, Change::Delete(raw), txn);
                }
            }
        }
        Ok(())
    }

    /// Heartbeats and markers. False once cut-over says the tables were swapped.
    async fn on_changelog_row(&mut self, row: &BinlogRow) -> Result<bool> {
        let id = match row.as_ref(0) {
            Some(BinlogValue::Value(Value::Int(i))) => *i as u64,
            Some(BinlogValue::Value(Value::UInt(u))) => *u,
            _ => return Ok(true),
        };
        let value = match row.as_ref(2) {
            Some(BinlogValue::Value(Value::Int(i))) => *i as u64,
            _ => return Ok(true),
        };
        if id == u64::from(HEARTBEAT_ID) {
            // Apply what came before it first: the lag it measures is then the applier's, and
            // a steady trickle of changes (never idle for the idle flush) is applied promptly.
            self.router.release_held();
            self.flush().await?;
            self.state.saw_heartbeat(value, &self.progress);
        } else if id == u64::from(MARKER_ID) && value > self.first_marker {
            self.router.release_held();
            self.flush().await?;
            if self.router.nothing_held() {
                self.state.reached_marker(value);
                // Hold here until cut-over says what happened: after a swap, the table's
                // name stands for the new table, whose changes must not be replayed.
                let control = self
                    .control
                    .wait_for(|c| c.stop || c.resumed >= value)
                    .await
                    .map(|c| *c)
                    .unwrap_or(Control {
                        resumed: 0,
                        stop: true,
                    });
                if control.stop {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The stream failed with `e`: if its session was lost (and retries are left), open it
    /// again at the last applied position. Everything after it comes again, so what was read
    /// but not applied is dropped; what was applied after it is applied again, which leaves
    /// the same rows.
    async fn stream_lost(&mut self, e: Error) -> Result<()> {
        if !retry_on_lost_session(&e, "binlog stream", &mut self.lost, self.retries).await {
            return Err(e);
        }
        let (file, position) = self
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (target, mariadb) = (&self.target, self.mariadb);
        let (stream, _) = reconnect("binlog stream", &mut self.lost, self.retries, || {
            open_stream(target, mariadb, &file, position)
        })
        .await?;
        self.stream = stream;
        self.file = file;
        self.before_format = true;
        self.router.forget();
        self.in_transaction = false;
        self.last_commit = None;
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let batch = self.router.batch();
        if !batch.is_empty() {
            // A batch is REPLACEs and DELETEs by key: applying it again, whether or not the lost
            // session's COMMIT landed, leaves the same rows.
            let mut lost = 0;
            loop {
                match self.statements.apply(&mut self.conn, batch).await {
                    Ok(()) => break,
                    Err(e) if retry_on_lost_session(&e, "apply", &mut lost, self.retries).await => {
                        // Opening the new session can be lost too: another try, counted.
                        let target = &self.target;
                        self.conn =
                            reconnect("apply", &mut lost, self.retries, || target.connect("apply"))
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
        // A resume may start after a transaction only when all of it is applied and nothing
        // before it is held.
        if self.router.nothing_held() && !self.in_transaction {
            if let Some(pos) = self.last_commit.take() {
                *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = (self.file.clone(), pos);
                self.lost = 0;
            }
        }
        Ok(())
    }
}

/// The file a rotate event names. The stream's first (artificial) rotate event comes before the
/// format description says whether events carry a checksum, so its name may end in the
/// checksum's four bytes: the name is the current file's base and the digits after it.
fn next_file(current: &str, named: &str) -> String {
    let base = current.rsplit_once('.').map_or("", |(b, _)| b);
    match named.strip_prefix(base).and_then(|r| r.strip_prefix('.')) {
        Some(rest) if !base.is_empty() => {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            format!("{base}.{digits}")
        }
        _ => named.to_string(),
    }
}

/// `file:position`, as a checkpoint records it.
pub fn parse_position(text: &str) -> Result<(String, u64)> {
    text.rsplit_once(':')
        .and_then(|(file, pos)| Some((file.to_string(), pos.parse().ok()?)))
        .ok_or_else(|| {
            Error::refused(format!(
                "the checkpoint's binlog position {text:?} is not file:position; remove the \
                 run's leftovers with `swivel cleanup` and start again"
            ))
        })
}

/// An event swivel does not know: it may carry changes to the table, so the run must stop.
fn unknown_event(kind: u8) -> Error {
    Error::Stream(format!(
        "the binlog holds an event of type {kind}, which swivel does not know and cannot tell is \
         harmless: the run stops, the original table is untouched"
    ))
}

/// A statement-format write to the table: the binlog has the statement, not the rows.
fn statement_write(sql: &str, table: &str) -> Error {
    let sql: String = sql.chars().take(200).collect();
    Error::Stream(format!(
        "a change to {table} reached the binlog as a statement (`{sql}`), not as rows, so swivel \
         cannot replay it: some session writes with binlog_format STATEMENT or MIXED. Sessions \
         keep the format they started with after SET GLOBAL binlog_format = 'ROW' until they \
         reconnect: restart the application's connections (or SET SESSION binlog_format = 'ROW' \
         in them) and run again. The run stops; the original table is untouched"
    ))
}

/// The words of a statement: identifiers and keywords, quotes and punctuation dropped.
fn words(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
}

/// A statement-format event (a query other than transaction control) that names the table:
/// one written in its database or naming that database too.
fn mentions_table(schema: &str, sql: &str, names: &Names) -> bool {
    let words: Vec<&str> = words(sql).collect();
    let Some(verb) = words.first() else {
        return false;
    };
    if ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "XA", "RELEASE"]
        .iter()
        .any(|v| verb.eq_ignore_ascii_case(v))
    {
        return false;
    }
    let names_it = |name: &str| words.iter().any(|w| w.eq_ignore_ascii_case(name));
    names_it(&names.table) && (schema.eq_ignore_ascii_case(&names.db) || names_it(&names.db))
}

/// A statement from the binlog that changes the table itself (DDL or TRUNCATE naming it).
fn changes_table(sql: &str, table: &str) -> bool {
    let mut words = words(sql);
    let Some(verb) = words.next() else {
        return false;
    };
    ["ALTER", "TRUNCATE", "DROP", "RENAME"]
        .iter()
        .any(|v| verb.eq_ignore_ascii_case(v))
        && words.any(|w| w == table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_gets_its_own_server_id() {
        // Opened back to back, as two runs of one process may be, within one microsecond.
        let ids: std::collections::HashSet<u32> = (0..10_000).map(|_| server_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id & 0x4000_0000 != 0));
    }

    #[test]
    fn rotate_names_lose_a_trailing_checksum() {
        assert_eq!(
            next_file("binlog.000001", "binlog.000002\u{fffd}0!"),
            "binlog.000002"
        );
        assert_eq!(next_file("binlog.000009", "binlog.000010"), "binlog.000010");
    }

    #[test]
    fn ddl_on_the_table_is_noticed() {
        assert!(changes_table("TRUNCATE TABLE `t`", "t"));
        assert!(changes_table("alter table db.t add column x int", "t"));
        assert!(!changes_table("ALTER TABLE `_t_new` MODIFY k bigint", "t"));
        assert!(!changes_table("CREATE TABLE `_t_swl` (id int)", "t"));
        assert!(!changes_table("BEGIN", "t"));
    }

    #[test]
    fn statement_format_writes_are_noticed() {
        let names = Names::new("shop", "orders");
        assert!(mentions_table("shop", "UPDATE `orders` SET k = 1", &names));
        assert!(mentions_table(
            "other",
            "delete from shop.orders where id=1",
            &names
        ));
        assert!(!mentions_table(
            "other",
            "delete from orders where id=1",
            &names
        ));
        assert!(!mentions_table(
            "shop",
            "UPDATE orders_archive SET k = 1",
            &names
        ));
        assert!(!mentions_table("shop", "COMMIT", &names));
    }
}
