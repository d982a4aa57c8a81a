//! The tools swivel is measured against, each run on its own fresh copy of the table: the
//! blocking ALTER, the copy floor, pt-online-schema-change and pg_repack.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::db::{Db, Target};
use super::scratch::{self, Server, COPY_TABLE, TABLE};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    Offline,
    CopyFloor,
    PtOsc,
    PgRepack,
}

impl Baseline {
    pub fn parse(name: &str) -> Result<Baseline> {
        Ok(match name.trim() {
            "offline" => Baseline::Offline,
            "copy-floor" => Baseline::CopyFloor,
            "pt-osc" => Baseline::PtOsc,
            "pg-repack" => Baseline::PgRepack,
            other => bail!(
                "unknown baseline `{other}`: use offline, copy-floor, pt-osc (MySQL/MariaDB) or \
                 pg-repack (PostgreSQL)"
            ),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Baseline::Offline => "offline",
            Baseline::CopyFloor => "copy-floor",
            Baseline::PtOsc => "pt-osc",
            Baseline::PgRepack => "pg-repack",
        }
    }

    /// The baselines that make sense on `server` when none are named.
    pub fn defaults(server: Server) -> Vec<Baseline> {
        let tool = match server {
            Server::Postgres => Baseline::PgRepack,
            Server::MySql => Baseline::PtOsc,
        };
        vec![Baseline::Offline, Baseline::CopyFloor, tool]
    }

    /// Refuse a baseline that belongs to the other server.
    pub fn check(self, server: Server) -> Result<()> {
        match (self, server) {
            (Baseline::PtOsc, Server::Postgres) => {
                bail!("pt-osc works on MySQL/MariaDB only; on PostgreSQL use pg-repack")
            }
            (Baseline::PgRepack, Server::MySql) => {
                bail!("pg-repack works on PostgreSQL only; on MySQL/MariaDB use pt-osc")
            }
            _ => Ok(()),
        }
    }

    /// In words, for the report.
    pub fn what(self, alter: &str) -> String {
        match self {
            Baseline::Offline => format!("`ALTER TABLE {TABLE} {alter}`: blocks writes throughout"),
            Baseline::CopyFloor => format!(
                "one `INSERT INTO {COPY_TABLE} SELECT … FROM {TABLE}` into an empty altered copy \
                 with the same indexes: how fast the server copies the rows at all"
            ),
            Baseline::PtOsc => format!("pt-online-schema-change --alter \"{alter}\" --execute"),
            Baseline::PgRepack => format!(
                "pg_repack --no-order --table {TABLE}: a rebuild of the same size, not the same \
                 change (pg_repack cannot alter a column)"
            ),
        }
    }
}

/// The bench created pg_repack's extension, so its cleanup drops it again.
pub static CREATED_PG_REPACK: AtomicBool = AtomicBool::new(false);

/// What a baseline measured of itself.
pub struct Measured {
    pub total: Duration,
    /// How long the copying took, where the run is a copy.
    pub copy: Option<Duration>,
    /// The run blocked writes as a whole (offline): its span is its cut-over.
    pub blocking: bool,
}

/// Get ready outside the timed span (the copy floor's empty altered copy); a tool that is not
/// installed is reported here, as the reason to skip.
pub async fn prepare(baseline: Baseline, target: &Target, alter: &str) -> Result<()> {
    let server = Server::of(target);
    match baseline {
        Baseline::Offline => Ok(()),
        Baseline::CopyFloor => {
            let mut db = target.connect("bench copy floor").await?;
            let like = match server {
                Server::Postgres => {
                    format!("CREATE TABLE {COPY_TABLE} (LIKE {TABLE} INCLUDING ALL)")
                }
                Server::MySql => format!("CREATE TABLE {COPY_TABLE} LIKE {TABLE}"),
            };
            db.exec(&format!("DROP TABLE IF EXISTS {COPY_TABLE}"))
                .await?;
            db.exec(&like).await?;
            db.exec(&format!("ALTER TABLE {COPY_TABLE} {alter}"))
                .await?;
            Ok(())
        }
        Baseline::PtOsc => which("pt-online-schema-change").map(drop).context(
            "pt-online-schema-change is not installed (Debian: apt-get install percona-toolkit)",
        ),
        Baseline::PgRepack => {
            let mut db = target.connect("bench pg_repack").await?;
            pg_repack_binary(&mut db).await.map(drop)?;
            let present = db
                .scalar("SELECT count(*) FROM pg_extension WHERE extname = 'pg_repack'")
                .await?;
            if present == "0" {
                db.exec("CREATE EXTENSION pg_repack")
                    .await
                    .context("pg_repack's extension cannot be created in this database")?;
                CREATED_PG_REPACK.store(true, Relaxed);
            }
            Ok(())
        }
    }
}

/// Run the baseline; its log goes to `log`.
pub async fn run(baseline: Baseline, target: &Target, alter: &str, log: &Path) -> Result<Measured> {
    let server = Server::of(target);
    let mut db = target.connect("bench baseline").await?;
    let started = Instant::now();
    match baseline {
        Baseline::Offline => {
            db.exec(&format!("ALTER TABLE {TABLE} {alter}")).await?;
            Ok(Measured {
                total: started.elapsed(),
                copy: None,
                blocking: true,
            })
        }
        Baseline::CopyFloor => {
            // Only the columns both tables have, so an ALTER that adds or drops one works too.
            let into = scratch::columns(&mut db, server, COPY_TABLE).await?;
            let from = scratch::columns(&mut db, server, TABLE).await?;
            let cols: Vec<String> = from.into_iter().filter(|c| into.contains(c)).collect();
            let cols = cols.join(", ");
            let started = Instant::now();
            db.exec(&format!(
                "INSERT INTO {COPY_TABLE} ({cols}) SELECT {cols} FROM {TABLE}"
            ))
            .await?;
            let took = started.elapsed();
            Ok(Measured {
                total: took,
                copy: Some(took),
                blocking: false,
            })
        }
        Baseline::PtOsc => {
            let Target::My(my) = target else {
                bail!("pt-osc needs a MySQL/MariaDB server");
            };
            let opts = my.opts();
            let mut dsn = format!(
                "h={},P={},D={},t={TABLE}",
                opts.ip_or_hostname(),
                opts.tcp_port(),
                my.db()
            );
            if let Some(user) = opts.user() {
                dsn.push_str(&format!(",u={user}"));
            }
            // The password goes in an option file only we can read, never on the command line.
            let defaults = log.with_extension("cnf");
            if let Some(pass) = opts.pass() {
                write_private(&defaults, &format!("[client]\npassword={pass}\n"))?;
                dsn = format!("F={},{dsn}", defaults.display());
            }
            let mut cmd = tokio::process::Command::new("pt-online-schema-change");
            cmd.args([
                "--alter",
                alter,
                "--execute",
                "--recursion-method=none",
                "--no-check-alter",
                &dsn,
            ]);
            let result = run_logged(cmd, log).await;
            let _ = std::fs::remove_file(&defaults);
            result?;
            Ok(Measured {
                total: started.elapsed(),
                copy: None,
                blocking: false,
            })
        }
        Baseline::PgRepack => {
            let Target::Pg(pg) = target else {
                bail!("pg_repack needs a PostgreSQL server");
            };
            let binary = pg_repack_binary(&mut db).await?;
            let config = pg.config();
            let mut cmd = tokio::process::Command::new(binary);
            cmd.args(["--no-order", "--table", TABLE]);
            if let Some(tokio_postgres::config::Host::Tcp(host)) = config.get_hosts().first() {
                cmd.args(["--host", host]);
            }
            if let Some(port) = config.get_ports().first() {
                cmd.args(["--port", &port.to_string()]);
            }
            if let Some(user) = config.get_user() {
                cmd.args(["--username", user]);
            }
            if let Some(dbname) = config.get_dbname() {
                cmd.args(["--dbname", dbname]);
            }
            // The environment, unlike the arguments, is not in the process list.
            if let Some(pass) = config.get_password() {
                cmd.env("PGPASSWORD", String::from_utf8_lossy(pass).as_ref());
            }
            run_logged(cmd, log).await?;
            Ok(Measured {
                total: started.elapsed(),
                copy: None,
                blocking: false,
            })
        }
    }
}

/// The pg_repack client of the server's major version (Debian keeps one per version), else
/// the one on the PATH.
async fn pg_repack_binary(db: &mut Db) -> Result<String> {
    let version: u32 = db.scalar("SHOW server_version_num").await?.parse()?;
    let versioned = format!("/usr/lib/postgresql/{}/bin/pg_repack", version / 10000);
    if Path::new(&versioned).exists() {
        return Ok(versioned);
    }
    which("pg_repack").with_context(|| {
        format!(
            "pg_repack is not installed (Debian: apt-get install postgresql-{}-repack, or \
             testbed/testbed.sh tools)",
            version / 10000
        )
    })
}

/// The program's path, if it is on the PATH.
fn which(program: &str) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Run a tool with its output in `log`; fail with the log's last lines if it fails. Killed if
/// the bench is stopped.
pub async fn run_logged(mut cmd: tokio::process::Command, log: &Path) -> Result<()> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let status = cmd
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("starting {:?}", cmd.as_std().get_program()))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{status}; the end of {}: {}",
            log.display(),
            tail.join(" / ")
        );
    }
    Ok(())
}
