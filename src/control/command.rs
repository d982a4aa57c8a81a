//! gh-ost's interactive commands, one per line: parsed here, applied to [`Steering`] by the
//! socket. `name=value` sets, `name=?` reads, a bare word acts.

use super::{Knobs, Loads, Steering};
use crate::options::{parse_duration, DurationUnit};
use std::path::PathBuf;

/// A knob the socket can read and set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knob {
    ChunkSize,
    TargetChunkTime,
    DmlBatchSize,
    MaxLagMillis,
    MaxLoad,
    CriticalLoad,
    NiceRatio,
    ThrottleQuery,
    ThrottleHttp,
    ThrottleControlReplicas,
    PostponeCutOverFlagFile,
}

const KNOBS: &[(&str, Knob)] = &[
    ("chunk-size", Knob::ChunkSize),
    ("target-chunk-time", Knob::TargetChunkTime),
    ("dml-batch-size", Knob::DmlBatchSize),
    ("max-lag-millis", Knob::MaxLagMillis),
    ("max-load", Knob::MaxLoad),
    ("critical-load", Knob::CriticalLoad),
    ("nice-ratio", Knob::NiceRatio),
    ("throttle-query", Knob::ThrottleQuery),
    ("throttle-http", Knob::ThrottleHttp),
    ("throttle-control-replicas", Knob::ThrottleControlReplicas),
    ("postpone-cut-over-flag-file", Knob::PostponeCutOverFlagFile),
];

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Help,
    /// `status`, or `status json`.
    Status {
        json: bool,
    },
    Sup,
    Version,
    Throttle,
    NoThrottle,
    Unpostpone,
    /// `panic`, or `panic=<table>` (gh-ost's named form).
    Panic {
        named: Option<String>,
    },
    Get(Knob),
    Set(Knob, String),
}

pub const HELP: &str = "\
available commands (one per line; name=? reads a value):
status               human-readable status
status json          status as one JSON object (all of --status-file, plus throttle state)
sup                  one-line status
version              swivel's version
chunk-size=N         rows per chunk (pins it; target-chunk-time=D resumes tuning)
target-chunk-time=D  tune chunks to take D each, e.g. 500ms
dml-batch-size=N     row changes the applier writes per batch
max-lag-millis=N     throttle above this lag; cut over only below it
max-load=V=N,...     throttle while a status variable is at or above N, e.g. Threads_running=25
critical-load=V=N,.. stop the run (cleanly) when a status variable reaches N
nice-ratio=F         sleep F times each chunk's time after it (0: no sleep)
throttle-query=SQL   throttle while this query returns a value > 0 (empty: none)
throttle-http=URL    throttle while this URL does not answer 200 (empty: none)
throttle-control-replicas=URL,...  replicas whose lag throttles the run
throttle             throttle until no-throttle
no-throttle          end a throttle begun by throttle
postpone-cut-over-flag-file=PATH   hold cut-over while PATH exists
unpostpone           cut over now if postponed (alias: cut-over)
panic                stop now, drop what the run made, leave the original table";

/// Parse one line; the error is the one-line reply.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (name, value) = match line.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (line, None),
    };
    let simple = |c: Command| match value {
        None => Ok(c),
        Some(_) => Err(format!("`{name}` takes no value")),
    };
    match name {
        "" => Err("empty command; send `help` for the list".into()),
        "help" => simple(Command::Help),
        "status" => simple(Command::Status { json: false }),
        "status json" => simple(Command::Status { json: true }),
        "sup" => simple(Command::Sup),
        "version" => simple(Command::Version),
        "throttle" => simple(Command::Throttle),
        "no-throttle" => simple(Command::NoThrottle),
        "unpostpone" | "cut-over" => simple(Command::Unpostpone),
        "panic" => Ok(Command::Panic {
            named: value.map(str::to_string),
        }),
        _ => {
            let knob = KNOBS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, k)| *k)
                .ok_or_else(|| format!("unknown command `{name}`; send `help` for the list"))?;
            match value {
                None => Err(format!("`{name}` needs a value (`{name}=…`) or `{name}=?`")),
                Some("?") => Ok(Command::Get(knob)),
                Some(v) => {
                    // Check now, so a bad value is answered and changes nothing.
                    let mut scratch = Knobs::default();
                    assign(&mut scratch, knob, v)?;
                    Ok(Command::Set(knob, v.to_string()))
                }
            }
        }
    }
}

pub fn knob_name(knob: Knob) -> &'static str {
    KNOBS
        .iter()
        .find(|(_, k)| *k == knob)
        .map_or("?", |(n, _)| n)
}

/// The knob's value as the socket shows it.
pub fn get(knobs: &Knobs, knob: Knob) -> String {
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map_or(String::new(), |p| p.display().to_string())
    };
    match knob {
        Knob::ChunkSize => knobs
            .chunk_size
            .map_or("auto".to_string(), |n| n.to_string()),
        Knob::TargetChunkTime => format!("{}ms", knobs.target_chunk_time.as_millis()),
        Knob::DmlBatchSize => knobs.dml_batch_size.to_string(),
        Knob::MaxLagMillis => knobs.max_lag.as_millis().to_string(),
        Knob::MaxLoad => knobs.max_load.to_string(),
        Knob::CriticalLoad => knobs.critical_load.to_string(),
        Knob::NiceRatio => knobs.nice_ratio.to_string(),
        Knob::ThrottleQuery => knobs.throttle_query.clone().unwrap_or_default(),
        Knob::ThrottleHttp => knobs.throttle_http.clone().unwrap_or_default(),
        Knob::ThrottleControlReplicas => knobs.throttle_control_replicas.join(","),
        Knob::PostponeCutOverFlagFile => path(&knobs.postpone_cut_over_flag_file),
    }
}

fn positive(name: &str, v: &str, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{name}={v}: give a whole number from 1 to {max}")),
    }
}

fn optional(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

/// Set `knob` from the text `v`; the error says what a valid value looks like.
pub fn assign(knobs: &mut Knobs, knob: Knob, v: &str) -> Result<(), String> {
    match knob {
        Knob::ChunkSize => knobs.chunk_size = Some(positive("chunk-size", v, 200_000)?),
        Knob::TargetChunkTime => {
            knobs.target_chunk_time = parse_duration(v, DurationUnit::Required)?;
            knobs.chunk_size = None;
        }
        Knob::DmlBatchSize => {
            knobs.dml_batch_size = positive("dml-batch-size", v, 100_000)? as usize
        }
        Knob::MaxLagMillis => knobs.max_lag = parse_duration(v, DurationUnit::Millis)?,
        Knob::MaxLoad => knobs.max_load = v.parse::<Loads>()?,
        Knob::CriticalLoad => knobs.critical_load = v.parse::<Loads>()?,
        Knob::NiceRatio => {
            knobs.nice_ratio = match v.parse::<f64>() {
                Ok(r) if (0.0..=100.0).contains(&r) => r,
                _ => return Err(format!("nice-ratio={v}: give a number from 0 to 100")),
            }
        }
        Knob::ThrottleQuery => knobs.throttle_query = optional(v),
        Knob::ThrottleHttp => {
            if !v.is_empty() && !v.starts_with("http://") {
                return Err(format!(
                    "throttle-http={v}: give an http:// URL (https is not supported yet)"
                ));
            }
            knobs.throttle_http = optional(v);
        }
        Knob::ThrottleControlReplicas => {
            knobs.throttle_control_replicas = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        Knob::PostponeCutOverFlagFile => {
            knobs.postpone_cut_over_flag_file = optional(v).map(PathBuf::from)
        }
    }
    Ok(())
}

/// Set a knob on the live state; the reply shows the value now in force, or the error.
pub fn set(steering: &Steering, knob: Knob, value: &str) -> String {
    let mut reply = Ok(());
    steering.update(|k| reply = assign(k, knob, value));
    match reply {
        Ok(()) => format!("{}={}", knob_name(knob), get(&steering.knobs(), knob)),
        Err(e) => format!("error: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn commands_parse_as_gh_ost_writes_them() {
        assert_eq!(parse("status"), Ok(Command::Status { json: false }));
        assert_eq!(parse(" status json \n"), Ok(Command::Status { json: true }));
        assert_eq!(parse("cut-over"), Ok(Command::Unpostpone));
        assert_eq!(parse("chunk-size=?"), Ok(Command::Get(Knob::ChunkSize)));
        assert_eq!(
            parse("max-load=Threads_running=25"),
            Ok(Command::Set(Knob::MaxLoad, "Threads_running=25".into()))
        );
        assert_eq!(
            parse("panic=orders"),
            Ok(Command::Panic {
                named: Some("orders".into())
            })
        );
        for bad in [
            "",
            "chunk-size",
            "chunk-size=0",
            "chunk-size=-1",
            "nice-ratio=x",
            "max-lag-millis=0",
            "max-load=Threads_running",
            "target-chunk-time=500",
            "throttle=1",
            "frobnicate",
            "throttle-http=ftp://x",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn set_then_get() {
        let s = Steering::new(Knobs::default());
        let set = |line: &str| match parse(line).unwrap() {
            Command::Set(knob, v) => super::set(&s, knob, &v),
            Command::Get(knob) => get(&s.knobs(), knob),
            other => panic!("{other:?}"),
        };
        assert_eq!(set("chunk-size=250"), "chunk-size=250");
        assert_eq!(set("chunk-size=?"), "250");
        assert_eq!(set("max-lag-millis=800"), "max-lag-millis=800");
        assert_eq!(s.max_lag(), Duration::from_millis(800));
        assert_eq!(set("target-chunk-time=1s"), "target-chunk-time=1000ms");
        assert_eq!(set("chunk-size=?"), "auto", "a target time resumes tuning");
        assert_eq!(set("throttle-query=SELECT 1"), "throttle-query=SELECT 1");
        assert_eq!(set("throttle-query="), "throttle-query=");
        assert!(s.knobs().throttle_query.is_none());
    }
}
