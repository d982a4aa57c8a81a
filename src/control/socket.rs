//! The control socket: a unix socket (mode 0600, removed at exit) and, opt-in, a TCP port on
//! 127.0.0.1, both speaking gh-ost's protocol: one command per line, a reply per command.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::command::{self, Command, HELP};
use super::hooks::Hooks;
use super::status::{self, RunInfo};
use super::Steering;
use crate::engine::progress::Progress;
use crate::error::{Error, Result};

/// What a command may read or change.
#[derive(Clone)]
pub struct Context {
    pub steering: Arc<Steering>,
    pub progress: Arc<Progress>,
    pub info: RunInfo,
    pub hooks: Arc<Hooks>,
}

/// gh-ost's default is `/tmp/gh-ost.<db>.<table>.sock`; swivel's adds the server's host and
/// port, so runs on two servers' tables of the same name from one host do not collide.
pub fn default_path(dsn: &str, table: &str) -> PathBuf {
    let rest = dsn.split_once("://").map_or(dsn, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let db = crate::engine::migrate::dsn_database(dsn);
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let parts: Vec<String> = [host, db, table]
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| clean(p))
        .collect();
    std::env::temp_dir().join(format!("swivel.{}.sock", parts.join(".")))
}

/// The running listeners; dropping it stops them and removes the socket file.
pub struct Server {
    path: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    pub async fn start(ctx: Context, path: Option<&Path>, tcp_port: Option<u16>) -> Result<Self> {
        let mut server = Server {
            path: None,
            tasks: Vec::new(),
        };
        if let Some(path) = path {
            let listener = bind_unix(path).await?;
            server.path = Some(path.to_path_buf());
            let ctx = ctx.clone();
            server.tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, ctx.clone()));
                }
            }));
        }
        if let Some(port) = tcp_port {
            let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
                Error::refused(format!(
                    "cannot serve on 127.0.0.1:{port} (--serve-tcp-port): {e}"
                ))
            })?;
            server.tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, ctx.clone()));
                }
            }));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bind at `path` with mode 0600 from the first moment it is reachable: bind under a private
/// temporary name, set the mode, then rename into place.
async fn bind_unix(path: &Path) -> Result<UnixListener> {
    let refuse = |why: String| Error::refused(format!("control socket {}: {why}", path.display()));
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(refuse(
                "another swivel is serving there (is a migration of this table already \
                 running?); give --serve-socket-file another path"
                    .into(),
            ));
        }
        // Left by a run that was killed: nobody answers on it.
        std::fs::remove_file(path)
            .map_err(|e| refuse(format!("removing the stale socket: {e}")))?;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(
        ".swivel-{}-{}.sock",
        std::process::id(),
        crate::engine::replay::now_micros()
    ));
    let listener = UnixListener::bind(&temp).map_err(|e| refuse(e.to_string()))?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(refuse(e.to_string()));
    }
    Ok(listener)
}

/// The most a client may send on one connection.
const MAX_BYTES: u64 = 64 * 1024;

/// One client: a reply per line. As with gh-ost, the connection closes once the client has
/// nothing more to say: `echo status | nc -U …` returns even with a netcat that never closes
/// its side. Lines sent together (`printf 'throttle\nsup\n' | nc -U …`) are all answered.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, ctx: Context) {
    let (read, mut write) = tokio::io::split(stream);
    // Commands are short: a client that sends more than this is cut off, not buffered.
    let mut lines = BufReader::new(read.take(MAX_BYTES)).lines();
    let mut wait = Duration::from_secs(10); // for the first line
    while let Ok(Ok(Some(line))) = tokio::time::timeout(wait, lines.next_line()).await {
        wait = Duration::from_millis(200);
        if line.trim().is_empty() {
            continue;
        }
        let reply = execute(&line, &ctx);
        ctx.hooks.interactive_command(line.trim(), &ctx.progress);
        if write
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Run one command line; the reply, without its final newline.
pub fn execute(line: &str, ctx: &Context) -> String {
    let command = match command::parse(line) {
        Ok(c) => c,
        Err(e) => return format!("error: {e}"),
    };
    let s = &ctx.steering;
    match command {
        Command::Get(knob) => command::get(&s.knobs(), knob),
        Command::Set(knob, value) => command::set(s, knob, &value),
        Command::Help => HELP.to_string(),
        Command::Status { json: false } => status::human(&ctx.info, &ctx.progress, s),
        Command::Status { json: true } => status::json(&ctx.progress, s).to_string(),
        Command::Sup => status::line(&ctx.progress, s),
        Command::Version => format!("swivel {}", env!("CARGO_PKG_VERSION")),
        Command::Throttle => {
            s.set_commanded_throttle(true);
            "throttled: commanded by user (send no-throttle to resume)".into()
        }
        Command::NoThrottle => {
            s.set_commanded_throttle(false);
            match s.throttle_reason() {
                Some(why) => format!("no longer throttled by user; still throttled: {why}"),
                None => "not throttled".into(),
            }
        }
        Command::Unpostpone => {
            s.unpostpone();
            "cut-over unpostponed: it runs as soon as the applier has caught up".into()
        }
        Command::Panic { named } => {
            let table = &ctx.info.table;
            let bare = table.rsplit('.').next().unwrap_or(table);
            match named {
                Some(n) if n != *table && n != bare => {
                    format!("error: panic={n} names another table; this run migrates {table}")
                }
                _ => {
                    s.stop("panic on the control socket".into());
                    "panic: stopping; the original table is left as it was".into()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_name_the_database_and_table() {
        let p = default_path(
            "postgres://app@db:5432/shop?sslmode=require",
            "public.orders",
        );
        assert!(
            p.ends_with("swivel.db-5432.shop.public.orders.sock"),
            "{p:?}"
        );
        let p = default_path("mysql://root@h/db1", "a/b");
        assert!(p.ends_with("swivel.h.db1.a-b.sock"), "{p:?}");
    }
}
