//! What the socket's `status`, `status json` and `sup` answer, the progress line, and the
//! status file's lines: the run's counters ([`Progress`]) with its steering state.

use std::path::PathBuf;
use std::time::SystemTime;

use super::command::{get, Knob};
use super::Steering;
use crate::engine::progress::{format_duration, Phase, Progress};

/// What does not change during a run, for the status's header.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub table: String,
    pub alter: String,
    pub socket: Option<PathBuf>,
    pub tcp_port: Option<u16>,
    pub started: SystemTime,
}

/// Throttled, postponed, or nothing: the state an operator needs besides the counters.
pub fn state(progress: &Progress, steering: &Steering) -> String {
    if let Some(why) = steering.stop_reason() {
        return format!("stopping: {why}");
    }
    let mut parts = Vec::new();
    if let Some(why) = steering.throttle_reason() {
        if steering.replay_forced() {
            parts.push(format!(
                "throttled ({why}); replay goes on: the slot's retained WAL reached the bound"
            ));
        } else {
            parts.push(format!("throttled ({why})"));
        }
    }
    if matches!(progress.phase(), Phase::CatchingUp | Phase::CuttingOver) {
        if let Some(why) = steering.postponed() {
            parts.push(format!("cut-over postponed ({why})"));
        }
    }
    parts.join("; ")
}

/// `sup`, and the progress line printed every --progress-interval.
pub fn line(progress: &Progress, steering: &Steering) -> String {
    let state = state(progress, steering);
    if state.is_empty() {
        progress.line()
    } else {
        format!("{}; {state}", progress.line())
    }
}

/// `status`: gh-ost's shape, a commented header and the progress line.
pub fn human(info: &RunInfo, progress: &Progress, steering: &Steering) -> String {
    let k = steering.knobs();
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or("(none)".to_string(), |p| p.display().to_string())
    };
    let mut out = vec![
        format!("# Migrating {}: {}", info.table, info.alter),
        format!(
            "# Started {} ago",
            format_duration(info.started.elapsed().unwrap_or_default())
        ),
        format!(
            "# chunk-size: {}; target-chunk-time: {}; dml-batch-size: {}; max-lag-millis: {}; nice-ratio: {}",
            get(&k, Knob::ChunkSize),
            get(&k, Knob::TargetChunkTime),
            k.dml_batch_size,
            k.max_lag.as_millis(),
            k.nice_ratio
        ),
        format!(
            "# max-load: {}; critical-load: {}",
            empty_as_none(k.max_load.to_string()),
            empty_as_none(k.critical_load.to_string())
        ),
        format!(
            "# throttle-query: {}; throttle-http: {}; throttle-control-replicas: {}",
            empty_as_none(k.throttle_query.clone().unwrap_or_default()),
            empty_as_none(k.throttle_http.clone().unwrap_or_default()),
            empty_as_none(get(&k, Knob::ThrottleControlReplicas))
        ),
        format!(
            "# throttle-flag-file: {}; throttle-additional-flag-file: {}",
            flag(&k.throttle_flag_file),
            flag(&k.throttle_additional_flag_file)
        ),
        format!(
            "# postpone-cut-over-flag-file: {}; panic-flag-file: {}",
            flag(&k.postpone_cut_over_flag_file),
            path(&k.panic_flag_file)
        ),
    ];
    if let Some(socket) = &info.socket {
        out.push(format!("# Serving on unix socket: {}", socket.display()));
    }
    if let Some(port) = info.tcp_port {
        out.push(format!("# Serving on TCP port: 127.0.0.1:{port}"));
    }
    out.push(line(progress, steering));
    out.join("\n")
}

fn empty_as_none(s: String) -> String {
    if s.is_empty() {
        "(none)".into()
    } else {
        s
    }
}

/// A flag file's path, and whether it is set now.
fn flag(p: &Option<PathBuf>) -> String {
    match p {
        None => "(none)".into(),
        Some(p) if p.exists() => format!("{} [set]", p.display()),
        Some(p) => format!("{} [not set]", p.display()),
    }
}

/// `status json` and the status file's lines.
pub fn json(progress: &Progress, steering: &Steering) -> serde_json::Value {
    let mut v = progress.status_json();
    let k = steering.knobs();
    let throttle = steering.throttle_reason();
    let extra = serde_json::json!({
        "throttled": throttle.is_some(),
        "throttle_reason": throttle,
        "replay_forced_by_wal_bound": steering.replay_forced(),
        "postponed": steering.postponed(),
        "state": state(progress, steering),
        "knobs": {
            "chunk_size": k.chunk_size,
            "target_chunk_time_ms": k.target_chunk_time.as_millis() as u64,
            "dml_batch_size": k.dml_batch_size,
            "max_lag_millis": k.max_lag.as_millis() as u64,
            "max_load": k.max_load.to_string(),
            "critical_load": k.critical_load.to_string(),
            "nice_ratio": k.nice_ratio,
            "throttle_query": k.throttle_query,
            "throttle_http": k.throttle_http,
            "throttle_control_replicas": k.throttle_control_replicas,
        },
    });
    if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
    v
}
