//! The checksum's MySQL/MariaDB side. The view: `LOCK TABLES t READ` (reads go on, writes wait)
//! until the applier has drained to a marker and stopped there, and meanwhile `START
//! TRANSACTION WITH CONSISTENT SNAPSHOT` in a session of its own. A row's hash is the first 64
//! bits of an MD5 over its columns, each brought to the form the shadow's column type gives it
//! (the copy's `REPLACE … SELECT` converts on store, which SQL cannot name, so both sides are
//! cast to the shadow's type family: numbers to their precision, text to utf8mb4, temporal
//! values to their fractional digits); a chunk's hashes are combined with `BIT_XOR`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params};

use super::copy::{chunk_end_on, range};
use super::cutover::{drain, lock_tables, tail_of, Retry};
use super::{quote_ident, tail, MyBackend};
use crate::engine::backend::{ChunkCheck, KeyRange, Repair};
use crate::engine::watermark::Key;
use crate::error::{Error, MyContext, Result};

/// Per-row hash and key expressions of both sides, built once per run.
#[derive(Clone, Debug)]
pub struct Hashing {
    source_row: String,
    shadow_row: String,
    source_key: Vec<String>,
    shadow_key: Vec<String>,
}

/// The expression that brings `x` to the form a column of this type stores.
fn normalized(
    x: &str,
    data_type: &str,
    column_type: &str,
    scale: Option<u64>,
    precision: Option<u64>,
) -> String {
    let unsigned = column_type.contains("unsigned");
    match data_type {
        "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "bit" | "year" => {
            if unsigned || data_type == "bit" {
                format!("CAST({x} AS UNSIGNED)")
            } else {
                format!("CAST({x} AS SIGNED)")
            }
        }
        "decimal" => format!(
            "CAST({x} AS DECIMAL({}, {}))",
            precision.unwrap_or(65),
            scale.unwrap_or(0)
        ),
        "float" => format!("CAST({x} AS FLOAT)"),
        "double" => format!("CAST({x} AS DOUBLE)"),
        "date" => format!("CAST({x} AS DATE)"),
        "datetime" | "timestamp" => format!("CAST({x} AS DATETIME({}))", scale.unwrap_or(0)),
        "time" => format!("CAST({x} AS TIME({}))", scale.unwrap_or(0)),
        // CHAR drops trailing spaces when read.
        "char" => format!("TRIM(TRAILING ' ' FROM CONVERT({x} USING utf8mb4))"),
        // A SET's text lists its members in the definition's order, which the ALTER may
        // change: list them in the shadow's order on both sides.
        "set" => match super::values::members(column_type) {
            Some(members) => {
                let each: Vec<String> = members
                    .iter()
                    .map(|m| {
                        let m = format!("'{}'", m.replace('\\', "\\\\").replace('\'', "''"));
                        format!("IF(FIND_IN_SET({m}, CONVERT({x} USING utf8mb4)), {m}, NULL)")
                    })
                    .collect();
                format!("CONCAT_WS(',', {})", each.join(", "))
            }
            None => format!("CONVERT({x} USING utf8mb4)"),
        },
        "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "json" => {
            format!("CONVERT({x} USING utf8mb4)")
        }
        _ => format!("CAST({x} AS BINARY)"),
    }
}

/// `CAST(CONV(LEFT(MD5(…), 16), 16, 10) AS UNSIGNED)` over the values and their NULL flags.
fn row_hash(values: &[String]) -> String {
    let nulls: Vec<String> = values.iter().map(|v| format!("ISNULL({v})")).collect();
    format!(
        "CAST(CONV(LEFT(MD5(CONCAT_WS('#', {}, CONCAT({}))), 16), 16, 10) AS UNSIGNED)",
        values.join(", "),
        nulls.join(", ")
    )
}

async fn hashing(b: &mut MyBackend) -> Result<Hashing> {
    let names = b.names.clone();
    let shadow = b.shadow()?.clone();
    let table = b.table()?.clone();
    /// name, data_type, column_type, numeric precision and scale, datetime precision,
    /// collation.
    type TypeRow = (
        String,
        String,
        String,
        Option<u64>,
        Option<u64>,
        Option<u64>,
        Option<String>,
    );
    let mut types_of = BTreeMap::new();
    for name in [&names.table, &names.shadow] {
        let rows: Vec<TypeRow> = b
            .ctl
            .exec(
                "SELECT column_name, data_type, column_type, numeric_precision, numeric_scale, \
                 datetime_precision, collation_name FROM information_schema.columns \
                 WHERE table_schema = ? AND table_name = ?",
                (names.db.as_str(), name.as_str()),
            )
            .await
            .my_ctx("reading the tables' column types")?;
        let types: BTreeMap<String, TypeRow> = rows
            .into_iter()
            .map(|r| (r.0.to_ascii_lowercase(), r))
            .collect();
        types_of.insert(name.clone(), types);
    }
    let (source_types, types) = (&types_of[&names.table], &types_of[&names.shadow]);
    let mut source_values = Vec::new();
    let mut shadow_values = Vec::new();
    for (&i, target) in shadow.sources.iter().zip(&shadow.targets) {
        let shadow_type = types
            .get(&target.to_ascii_lowercase())
            .ok_or_else(|| Error::Stream(format!("shadow column {target} has no type")))?;
        let source_name = &table.columns[i].name;
        let unchanged = source_types
            .get(&source_name.to_ascii_lowercase())
            .is_some_and(|t| (&t.2, &t.6) == (&shadow_type.2, &shadow_type.6));
        if unchanged {
            // Same type, character set and collation: the stored values compare as they are
            // (and cost nothing to convert).
            source_values.push(quote_ident(source_name));
            shadow_values.push(quote_ident(target));
            continue;
        }
        let (_, data_type, column_type, precision, numeric_scale, datetime_scale, _) = shadow_type;
        let scale = numeric_scale.or(*datetime_scale);
        let norm = |x: &str| {
            normalized(
                x,
                &data_type.to_ascii_lowercase(),
                &column_type.to_ascii_lowercase(),
                scale,
                *precision,
            )
        };
        source_values.push(norm(&quote_ident(&table.columns[i].name)));
        shadow_values.push(norm(&quote_ident(target)));
    }
    let source_key: Vec<String> = table.key_names().iter().map(|s| s.to_string()).collect();
    let shadow_key = source_key.iter().map(|k| b.renamed(k)).collect();
    Ok(Hashing {
        source_row: row_hash(&source_values),
        shadow_row: row_hash(&shadow_values),
        source_key,
        shadow_key,
    })
}

/// Lock, drain, open the snapshot, unlock.
pub async fn begin(
    b: &mut MyBackend,
    lock_timeout: Duration,
) -> Result<std::result::Result<Duration, String>> {
    if b.hashing.is_none() {
        b.hashing = Some(hashing(b).await?);
    }
    if b.checksum_conn.is_none() {
        b.checksum_conn = Some(b.session("checksum").await?);
    }
    if b.checksum_twin.is_none() {
        b.checksum_twin = Some(b.session("checksum").await?);
    }
    if b.marker_conn.is_none() {
        b.marker_conn = Some(b.session("marker").await?);
    }
    catch_up(b).await?;
    let mut locker = b.session("checksum lock").await?;
    let requested = Instant::now();
    let lock = format!("LOCK TABLES {} READ", b.names.source());
    let outcome = match drained_under(b, &mut locker, &lock, lock_timeout).await {
        Err(Retry::Because(why)) => Err(why),
        Ok(marker) => {
            // Both snapshots under the lock: the source cannot change between them.
            let mut opened = Ok(());
            for conn in [b.checksum_conn.as_mut(), b.checksum_twin.as_mut()] {
                let one = match conn {
                    Some(conn) => conn
                        .query_drop(
                            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
                             START TRANSACTION WITH CONSISTENT SNAPSHOT",
                        )
                        .await
                        .my_ctx("opening the checksum's snapshot"),
                    None => Err(Error::Stream("the checksum session is gone".into())),
                };
                opened = opened.and(one);
            }
            // Only a lock still held now proves no write slipped in before the snapshot.
            let held = locker.query_drop("DO 1").await.is_ok();
            let _ = locker.query_drop("UNLOCK TABLES").await;
            tail_of(b)?.resume(marker);
            opened?;
            if held {
                Ok(requested.elapsed())
            } else {
                end(b).await?;
                Err("the lock's session was lost before the snapshot was taken".to_string())
            }
        }
    };
    let _ = locker.query_drop("UNLOCK TABLES").await;
    Ok(outcome)
}

/// Before the lock: let the applier consume everything written so far, so the drain under the
/// lock has only the last moments to apply. The marker stops the applier; it goes on at once.
async fn catch_up(b: &mut MyBackend) -> Result<()> {
    let marker = b.next_marker();
    let names = b.names.clone();
    let conn = b
        .marker_conn
        .as_mut()
        .ok_or_else(|| Error::Stream("the marker session is gone".into()))?;
    tail::emit_marker(conn, &names, marker).await?;
    let tail = tail_of(b)?;
    let reached = loop {
        match tail.wait_marker(marker, Duration::from_secs(1)).await {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    tail.resume(marker);
    reached
}

/// Take `lock` on `locker` and let the applier drain to a marker, where it stops until
/// resumed. Ok(the marker); on Err the lock may still be held and the applier was resumed.
async fn drained_under(
    b: &mut MyBackend,
    locker: &mut Conn,
    lock: &str,
    timeout: Duration,
) -> std::result::Result<u64, Retry> {
    lock_tables(b.mariadb, locker, lock, timeout).await?;
    drain(b, timeout).await
}

fn hashing_of(b: &MyBackend) -> Result<Hashing> {
    b.hashing
        .clone()
        .ok_or_else(|| Error::Stream("the checksum's view was never opened".into()))
}

pub async fn chunk(b: &mut MyBackend, after: Option<&Key>, rows: u64) -> Result<ChunkCheck> {
    let h = hashing_of(b)?;
    let (source, shadow) = (b.names.source(), b.names.shadow_q());
    let (Some(conn), Some(twin)) = (b.checksum_conn.as_mut(), b.checksum_twin.as_mut()) else {
        return Err(Error::Stream("the checksum's view is not open".into()));
    };
    let upto = chunk_end_on(conn, &source, &h.source_key, after, rows).await?;
    let (source_cond, sp) = range(&h.source_key, after, upto.as_ref());
    let (shadow_cond, dp) = range(&h.shadow_key, after, upto.as_ref());
    // One scan per side, the two sides at once, one per session (snapshots opened together).
    let sum = |table: &str, row: &str, cond: &str| {
        format!("SELECT COUNT(*), BIT_XOR({row}) FROM {table} FORCE INDEX (PRIMARY) WHERE {cond}")
    };
    // Each side: its row count and the XOR of its row hashes.
    let (s, d) = tokio::try_join!(
        conn.exec_first::<(u64, u64), _, _>(
            sum(&source, &h.source_row, &source_cond),
            Params::Positional(sp)
        ),
        twin.exec_first::<(u64, u64), _, _>(
            sum(&shadow, &h.shadow_row, &shadow_cond),
            Params::Positional(dp)
        ),
    )
    .my_ctx("comparing a checksum chunk")?;
    let ((sn, sh), (dn, dh)) = (s.unwrap_or_default(), d.unwrap_or_default());
    Ok(ChunkCheck {
        upto,
        rows: sn,
        equal: (sn, sh) == (dn, dh),
    })
}

/// In the view: the rows of `range` whose hashes differ (or that one side lacks), each as the
/// range from the key before it, on either side, up to its key. The first few are logged with
/// both sides' rows.
pub async fn differences(b: &mut MyBackend, range: &KeyRange) -> Result<Vec<KeyRange>> {
    let h = hashing_of(b)?;
    let (source, shadow) = (b.names.source(), b.names.shadow_q());
    let conn = b
        .checksum_conn
        .as_mut()
        .ok_or_else(|| Error::Stream("the checksum's view is not open".into()))?;
    let sides = [
        (&h.source_key, &h.source_row, &source),
        (&h.shadow_key, &h.shadow_row, &shadow),
    ];
    // Key → (source hash, shadow hash), in key order.
    let mut rows: BTreeMap<Key, [Option<u64>; 2]> = BTreeMap::new();
    for (side, (keys, hash, table)) in sides.into_iter().enumerate() {
        let (cond, params) = range_of(keys, range);
        let quoted: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
        let found: Vec<mysql_async::Row> = conn
            .exec(
                format!(
                    "SELECT {}, {hash} FROM {table} FORCE INDEX (PRIMARY) WHERE {cond}",
                    quoted.join(", ")
                ),
                Params::Positional(params),
            )
            .await
            .my_ctx("comparing a differing chunk row by row")?;
        for mut r in found {
            let key = (0..keys.len())
                .map(|i| {
                    r.take::<mysql_async::Value, _>(i)
                        .as_ref()
                        .and_then(super::values::key_part)
                        .ok_or_else(|| Error::Stream("a key value the checksum cannot read".into()))
                })
                .collect::<Result<Key>>()?;
            rows.entry(key).or_default()[side] = r.take::<Option<u64>, _>(keys.len()).flatten();
        }
    }
    let out = crate::engine::checksum::differing_ranges(rows, range.after.clone());
    for r in out.iter().take(5) {
        let mut shown = Vec::new();
        for (keys, table) in [(&h.source_key, &source), (&h.shadow_key, &shadow)] {
            let (cond, params) = range_of(keys, r);
            let quoted: Vec<String> = keys
                .iter()
                .map(|k| format!("{} DESC", quote_ident(k)))
                .collect();
            let row: Option<mysql_async::Row> = conn
                .exec_first(
                    format!(
                        "SELECT * FROM {table} WHERE {cond} ORDER BY {} LIMIT 1",
                        quoted.join(", ")
                    ),
                    Params::Positional(params),
                )
                .await
                .my_ctx("reading a differing row")?;
            shown.push(row.map_or("(none)".to_string(), |row| {
                format!("{:?}", row.unwrap()).chars().take(300).collect()
            }));
        }
        crate::engine::checksum::log_differing_row(r, &shown[0], &shown[1]);
    }
    Ok(out)
}

fn range_of(keys: &[String], r: &KeyRange) -> (String, Vec<mysql_async::Value>) {
    range(keys, r.after.as_ref(), r.upto.as_ref())
}

pub async fn end(b: &mut MyBackend) -> Result<()> {
    for conn in [b.checksum_conn.as_mut(), b.checksum_twin.as_mut()]
        .into_iter()
        .flatten()
    {
        conn.query_drop("ROLLBACK")
            .await
            .my_ctx("closing the checksum's snapshot")?;
    }
    Ok(())
}

/// With writes held off the source and the applier stopped at a marker: copy each range
/// again, then compare its rows one by one.
pub async fn repair(
    b: &mut MyBackend,
    ranges: &[KeyRange],
    lock_timeout: Duration,
) -> Result<Repair> {
    let h = hashing_of(b)?;
    if b.marker_conn.is_none() {
        b.marker_conn = Some(b.session("marker").await?);
    }
    catch_up(b).await?;
    let mut locker = b.session("checksum repair lock").await?;
    let mut worker = b.session("checksum repair").await?;
    let requested = Instant::now();
    let lock = format!("LOCK TABLES {} READ", b.names.source());
    let marker = match drained_under(b, &mut locker, &lock, lock_timeout).await {
        Ok(m) => m,
        Err(Retry::Because(why)) => {
            let _ = locker.query_drop("UNLOCK TABLES").await;
            return Ok(Repair {
                retry: Some(why),
                stall: requested.elapsed(),
                still_differ: Vec::new(),
            });
        }
    };
    let result = copy_again(b, &mut worker, &h, ranges).await;
    // Lost, the lock no longer kept writes out of the comparison: copying again was harmless
    // (the applier waits at the marker and replays what came after), the verdict is not.
    let held = locker.query_drop("DO 1").await.is_ok();
    let _ = locker.query_drop("UNLOCK TABLES").await;
    let stall = requested.elapsed();
    tail_of(b)?.resume(marker);
    if !held {
        return Ok(Repair {
            retry: Some("the lock's session was lost during the repair".into()),
            stall,
            still_differ: Vec::new(),
        });
    }
    Ok(Repair {
        retry: None,
        stall,
        still_differ: result?,
    })
}

async fn copy_again(
    b: &MyBackend,
    worker: &mut Conn,
    h: &Hashing,
    ranges: &[KeyRange],
) -> Result<Vec<String>> {
    let shadow = b.shadow()?;
    let table = b.table()?;
    let (source, shadow_q) = (b.names.source(), b.names.shadow_q());
    let mut still = Vec::new();
    worker
        .query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .my_ctx("preparing the repair session")?;
    for r in ranges {
        let (source_cond, source_params) = range(&h.source_key, r.after.as_ref(), r.upto.as_ref());
        let (shadow_cond, shadow_params) = range(&h.shadow_key, r.after.as_ref(), r.upto.as_ref());
        worker
            .query_drop("START TRANSACTION")
            .await
            .my_ctx("starting the repair")?;
        worker
            .exec_drop(
                format!("DELETE FROM {shadow_q} WHERE {shadow_cond}"),
                Params::Positional(shadow_params.clone()),
            )
            .await
            .my_ctx("deleting a differing chunk")?;
        worker
            .exec_drop(
                format!(
                    "REPLACE INTO {shadow_q} ({}) SELECT {} FROM {source} FORCE INDEX (PRIMARY) WHERE {source_cond}",
                    shadow.target_list(),
                    shadow.source_list(&table.columns)
                ),
                Params::Positional(source_params.clone()),
            )
            .await
            .my_ctx("copying a differing chunk again")?;
        worker
            .query_drop("COMMIT")
            .await
            .my_ctx("committing the repair")?;
        let key_text = |keys: &[String]| {
            format!(
                "CONCAT_WS(', ', {})",
                keys.iter()
                    .map(|k| quote_ident(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let source_rows: BTreeMap<String, u64> = worker
            .exec(
                format!(
                    "SELECT {}, {} FROM {source} WHERE {source_cond}",
                    key_text(&h.source_key),
                    h.source_row
                ),
                Params::Positional(source_params),
            )
            .await
            .my_ctx("reading a repaired chunk's source rows")?
            .into_iter()
            .collect();
        let shadow_rows: BTreeMap<String, u64> = worker
            .exec(
                format!(
                    "SELECT {}, {} FROM {shadow_q} WHERE {shadow_cond}",
                    key_text(&h.shadow_key),
                    h.shadow_row
                ),
                Params::Positional(shadow_params),
            )
            .await
            .my_ctx("reading a repaired chunk's shadow rows")?
            .into_iter()
            .collect();
        for (k, hash) in &source_rows {
            if shadow_rows.get(k) != Some(hash) {
                still.push(format!("({k})"));
            }
        }
        for k in shadow_rows.keys() {
            if !source_rows.contains_key(k) {
                still.push(format!("({k})"));
            }
        }
    }
    Ok(still)
}
