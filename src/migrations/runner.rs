//! `swivel migrate status|validate|plan|up|down|repair`: the files against the history, and each
//! pending statement run down its safe path, one runner at a time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::engine::backend::backoff;
use crate::engine::migrate::Outcome;
use crate::error::{Error, Result};
use crate::lint::Server;
use crate::migrations::files::{self, compare_versions, Migration, Statement};
use crate::migrations::history::{self, Direction, Entry, How, StatementRun};
use crate::migrations::route::{self, Kind};
use crate::migrations::session::{one_line, Session};
use crate::options::RunOptions;

/// Above this size an `ALTER TABLE` goes through the online engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    Rows(u64),
    Bytes(u64),
}

impl Threshold {
    /// `1000000` (rows) or `1GB` (bytes).
    pub fn parse(s: &str) -> std::result::Result<Threshold, String> {
        match s.trim().parse::<u64>() {
            Ok(rows) => Ok(Threshold::Rows(rows)),
            Err(_) => crate::options::parse_bytes(s)
                .map(Threshold::Bytes)
                .map_err(|e| format!("{e}; give a number of rows (1000000) or a size (1GB)")),
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Rows(n) => write!(f, "{n} rows"),
            Threshold::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    pub execute: bool,
    /// How long to wait for another runner's lock before refusing.
    pub lock_wait: Duration,
    /// How long a direct statement waits for its table locks, per attempt.
    pub lock_timeout: Duration,
    /// Attempts of a direct statement that timed out on its locks.
    pub lock_retries: u32,
    pub online_threshold: Threshold,
    /// The online engine's options: connection and knobs (table, alter and execute are set per
    /// statement).
    pub engine: RunOptions,
}

/// Where a version stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Applied,
    Pending,
    /// Its last run failed (or was interrupted): the history says which statements ran.
    Failed,
    /// Applied, and its file has changed since.
    Drifted,
    /// Applied, and its file is gone.
    Missing,
    /// Pending, but older than an applied version: it would never run in order.
    OutOfOrder,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Failed => "failed",
            State::Drifted => "drifted",
            State::Missing => "missing",
            State::OutOfOrder => "out of order",
        }
    }
}

/// One version: its file, its last history entry and where that leaves it.
#[derive(Clone, Debug)]
pub struct Version {
    pub version: String,
    pub description: String,
    pub state: State,
    pub file: Option<Migration>,
    pub last: Option<Entry>,
}

/// Every version on disk or in the history, in version order.
pub fn versions(migrations: &[Migration], history: &[Entry]) -> Vec<Version> {
    let mut out: Vec<Version> = Vec::new();
    let last = |v: &str| history.iter().rev().find(|e| e.version == v).cloned();
    for m in migrations {
        out.push(Version {
            version: m.version.clone(),
            description: m.description.clone(),
            state: State::Pending,
            file: Some(m.clone()),
            last: last(&m.version),
        });
    }
    for e in history {
        if !out.iter().any(|v| v.version == e.version) {
            out.push(Version {
                version: e.version.clone(),
                description: e.description.clone(),
                state: State::Pending,
                file: None,
                last: last(&e.version),
            });
        }
    }
    out.sort_by(|a, b| compare_versions(&a.version, &b.version));
    for v in &mut out {
        v.state = match (&v.last, &v.file) {
            (None, _) => State::Pending,
            (Some(e), _) if !e.success => State::Failed,
            (Some(e), _) if e.direction == Direction::Down => State::Pending,
            (Some(_), None) => State::Missing,
            (Some(e), Some(f)) if e.checksum != f.checksum => State::Drifted,
            (Some(_), Some(_)) => State::Applied,
        };
    }
    let newest_applied = out
        .iter()
        .rev()
        .find(|v| v.state != State::Pending)
        .map(|v| v.version.clone());
    if let Some(newest) = newest_applied {
        for v in &mut out {
            if v.state == State::Pending && compare_versions(&v.version, &newest).is_lt() {
                v.state = State::OutOfOrder;
            }
        }
    }
    out
}

/// What stops `up` and `down`: each with what to do.
pub fn problems(versions: &[Version], dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for v in versions {
        let name = format!("V{} ({})", v.version, v.description);
        match v.state {
            State::Failed => {
                let e = v.last.as_ref().expect("a failed version has an entry");
                let way = match e.direction {
                    Direction::Up => "up",
                    Direction::Down => "down",
                };
                let failed = e.statements.iter().find_map(|s| {
                    s.error
                        .as_ref()
                        .map(|err| format!("the statement on line {} failed: {err}", s.line))
                });
                out.push(format!(
                    "{name}: its last {way} run did not finish; {} statement(s) completed; {}. To \
                     go on: undo by hand what those statements did, correct the file, then run \
                     swivel migrate repair (it forgets the failed run) and {way} again",
                    e.completed(),
                    failed.unwrap_or_else(|| "it was interrupted".to_string())
                ));
            }
            State::Drifted => out.push(format!(
                "{name}: applied with checksum {}, but {} now has checksum {}: an applied \
                 migration was edited. Restore the file (git checkout), or, if the edit does not \
                 change the schema, run swivel migrate repair to record the new checksum",
                v.last.as_ref().map_or(0, |e| e.checksum),
                v.file
                    .as_ref()
                    .map_or(String::new(), |f| f.path.display().to_string()),
                v.file.as_ref().map_or(0, |f| f.checksum),
            )),
            State::Missing => out.push(format!(
                "{name}: applied, but {} holds no file for it: restore the file",
                dir.display()
            )),
            State::OutOfOrder => out.push(format!(
                "{name}: pending, but older than an applied version: rename the file with a newer \
                 version (swivel migrate new makes one)"
            )),
            State::Applied | State::Pending => {}
        }
    }
    out
}

/// A runner connected to one database, with the migrations on disk.
pub struct Runner {
    session: Session,
    opts: Options,
    migrations: Vec<Migration>,
    shutdown: watch::Receiver<bool>,
    /// Migrations planned so far by this command (a plan's later ones are checked against a
    /// schema their predecessors have not changed yet).
    planned: usize,
    /// Statements a plan found refused.
    refusals: usize,
}

/// How a statement will run.
#[derive(Clone, Debug)]
enum Route {
    Direct(String),
    /// `copies`: whether the engine's plan copies the table (None: not checked yet).
    Online {
        table: String,
        actions: String,
        copies: Option<bool>,
    },
    Index(String),
}

impl Runner {
    pub async fn connect(opts: Options, shutdown: watch::Receiver<bool>) -> Result<Runner> {
        let session = Session::connect(&opts.engine.dsn, opts.engine.password.as_deref()).await?;
        let migrations = files::load_dir(&opts.dir, session.server().dialect().as_ref())?;
        Ok(Runner {
            session,
            opts,
            migrations,
            shutdown,
            planned: 0,
            refusals: 0,
        })
    }

    /// How long `repair` waits for another runner.
    pub fn set_lock_wait(&mut self, wait: Duration) {
        self.opts.lock_wait = wait;
    }

    async fn versions(&mut self) -> Result<Vec<Version>> {
        let history = history::read(&mut self.session).await?;
        Ok(versions(&self.migrations, &history))
    }

    /// `status`: a line per version, then what is wrong. Returns whether all is well.
    pub async fn status(&mut self) -> Result<bool> {
        let versions = self.versions().await?;
        if versions.is_empty() {
            println!("no migrations in {}", self.opts.dir.display());
            return Ok(true);
        }
        let width = versions
            .iter()
            .map(|v| v.version.len())
            .max()
            .unwrap_or(7)
            .max(7);
        let dwidth = versions
            .iter()
            .map(|v| v.description.len())
            .max()
            .unwrap_or(11)
            .max(11);
        println!(
            "{:width$}  {:dwidth$}  {:12}  {:19}  how",
            "version", "description", "state", "installed on (UTC)"
        );
        for v in &versions {
            let (on, how) = match (&v.last, v.state) {
                (Some(e), State::Applied | State::Drifted | State::Missing | State::Failed) => {
                    (e.installed_on.clone(), describe_runs(&e.statements))
                }
                _ => ("-".to_string(), String::new()),
            };
            println!(
                "{:width$}  {:dwidth$}  {:12}  {:19}  {how}",
                v.version,
                v.description,
                v.state.name(),
                on
            );
        }
        let problems = problems(&versions, &self.opts.dir);
        for p in &problems {
            println!("problem: {p}");
        }
        Ok(problems.is_empty())
    }

    /// `validate`: the history against the files. Returns whether it is clean.
    pub async fn validate(&mut self) -> Result<bool> {
        let versions = self.versions().await?;
        let problems = problems(&versions, &self.opts.dir);
        for p in &problems {
            println!("problem: {p}");
        }
        for m in &self.migrations {
            if !m.has_down {
                println!(
                    "warning: V{} ({}) has no Down section: swivel migrate down cannot undo it",
                    m.version, m.description
                );
            }
        }
        let applied = versions
            .iter()
            .filter(|v| v.state == State::Applied)
            .count();
        let pending = versions
            .iter()
            .filter(|v| v.state == State::Pending)
            .count();
        if problems.is_empty() {
            println!(
                "valid: {} migration file(s), {applied} applied, {pending} pending",
                self.migrations.len()
            );
        }
        Ok(problems.is_empty())
    }

    /// `up`: plan the pending migrations up to `to`, and with --execute apply them in order.
    pub async fn up(&mut self, to: Option<&str>) -> Result<()> {
        if let Some(to) = to {
            self.known(to)?;
        }
        self.lock_if_executing().await?;
        let versions = self.versions().await?;
        self.refuse_problems(&versions)?;
        let pending: Vec<Migration> = versions
            .into_iter()
            .filter(|v| v.state == State::Pending)
            .filter(|v| to.map_or(true, |to| compare_versions(&v.version, to).is_le()))
            .filter_map(|v| v.file)
            .collect();
        if pending.is_empty() {
            println!("nothing to apply: the database is up to date");
        }
        for m in &pending {
            let statements = m.up.clone();
            self.migration(m, Direction::Up, &statements).await?;
        }
        self.finish(pending.len(), "applied")
    }

    /// `down`: undo the newest `steps` applied migrations, or all applied above `to`.
    pub async fn down(&mut self, steps: Option<usize>, to: Option<&str>) -> Result<()> {
        if let Some(to) = to {
            self.known(to)?;
        }
        self.lock_if_executing().await?;
        let versions = self.versions().await?;
        self.refuse_problems(&versions)?;
        let applied: Vec<Migration> = versions
            .into_iter()
            .rev()
            .filter(|v| v.state == State::Applied)
            .filter_map(|v| v.file)
            .collect();
        let undo: Vec<Migration> = match to {
            Some(to) => applied
                .into_iter()
                .filter(|m| compare_versions(&m.version, to).is_gt())
                .collect(),
            None => applied.into_iter().take(steps.unwrap_or(1)).collect(),
        };
        if let Some(m) = undo.iter().find(|m| !m.has_down) {
            return Err(Error::refused(format!(
                "V{} ({}) has no Down section, so it cannot be undone: add one to {}, then \
                 swivel migrate repair to record its new checksum",
                m.version,
                m.description,
                m.path.display()
            )));
        }
        if undo.is_empty() {
            println!("nothing to undo");
        }
        for m in &undo {
            let statements = m.down.clone();
            self.migration(m, Direction::Down, &statements).await?;
        }
        self.finish(undo.len(), "undone")
    }

    /// `repair`: remove failed runs from the history and record the checksums of edited
    /// applied files, as Flyway's repair does.
    pub async fn repair(&mut self) -> Result<()> {
        self.session.lock(self.opts.lock_wait).await?;
        let versions = self.versions().await?;
        let mut changed = 0;
        for v in &versions {
            let Some(e) = &v.last else { continue };
            match v.state {
                State::Failed => {
                    history::delete(&mut self.session, e.rank).await?;
                    println!(
                        "removed the failed run of V{} ({} statement(s) had completed)",
                        v.version,
                        e.completed()
                    );
                    changed += 1;
                }
                State::Drifted => {
                    let sum = v.file.as_ref().map_or(e.checksum, |f| f.checksum);
                    history::realign(&mut self.session, e.rank, sum).await?;
                    println!(
                        "recorded the new checksum of V{}: {} (was {})",
                        v.version, sum, e.checksum
                    );
                    changed += 1;
                }
                _ => {}
            }
        }
        if changed == 0 {
            println!("nothing to repair");
        }
        Ok(())
    }

    fn known(&self, version: &str) -> Result<()> {
        if self.migrations.iter().any(|m| m.version == version) {
            Ok(())
        } else {
            Err(Error::refused(format!(
                "no migration in {} has version {version}",
                self.opts.dir.display()
            )))
        }
    }

    async fn lock_if_executing(&mut self) -> Result<()> {
        if self.opts.execute {
            self.session.lock(self.opts.lock_wait).await?;
            history::create(&mut self.session).await?;
        }
        Ok(())
    }

    fn refuse_problems(&self, versions: &[Version]) -> Result<()> {
        let problems = problems(versions, &self.opts.dir);
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::refused(format!(
            "the history and the files disagree (swivel migrate validate lists it all):\n  {}",
            problems.join("\n  ")
        )))
    }

    fn finish(&self, n: usize, what: &str) -> Result<()> {
        if self.refusals > 0 {
            return Err(Error::refused(format!(
                "{} statement(s) above would be refused; nothing was changed",
                self.refusals
            )));
        }
        if !self.opts.execute && n > 0 {
            println!("nothing was changed (add --execute to run it)");
        } else if n > 0 {
            println!("{n} migration(s) {what}");
        }
        Ok(())
    }

    /// Plan one migration's statements, print the plan, and with --execute run them.
    async fn migration(
        &mut self,
        m: &Migration,
        direction: Direction,
        statements: &[Statement],
    ) -> Result<()> {
        let way = if direction == Direction::Up {
            "up"
        } else {
            "down"
        };
        println!("V{} {} ({way})", m.version, m.description);
        if direction == Direction::Up {
            self.print_lint(m)?;
        }
        let mut routes = Vec::new();
        let mut transaction_control = false;
        // The tables this migration's ALTERs change, so far.
        let mut altered: Vec<String> = Vec::new();
        for st in statements {
            let (route, why) = match self.route(st, &mut altered).await {
                Ok(r) => r,
                // A plan lists every refusal; a run stops at the first, before anything ran.
                Err(e) if !self.opts.execute => {
                    println!("  line {}: {e}", st.line);
                    self.refusals += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            transaction_control |= route.is_none();
            let route = route.unwrap_or(Route::Direct(st.sql.clone()));
            println!("  line {}: {why}", st.line);
            if let Err(e) = self.one_copy_per_table(&routes, &route, st.line) {
                if self.opts.execute {
                    return Err(e);
                }
                println!("  line {}: {e}", st.line);
                self.refusals += 1;
            }
            routes.push((st.line, route));
        }
        self.planned += 1;
        if !self.opts.execute {
            return Ok(());
        }
        // PostgreSQL runs a migration of direct statements in one transaction: a failure leaves
        // nothing of it. The rest runs statement by statement, each recorded as it completes.
        let one_transaction = self.session.server() == Server::Postgres
            && !transaction_control
            && routes.iter().all(|(_, r)| matches!(r, Route::Direct(_)));
        let started = Instant::now();
        let result = if one_transaction {
            self.in_transaction(m, direction, &routes).await
        } else {
            self.statement_by_statement(m, direction, &routes).await
        };
        let ms = started.elapsed().as_millis();
        match result {
            Ok(()) => {
                println!("  done in {ms} ms");
                Ok(())
            }
            Err(e) if one_transaction => Err(Error::refused(format!(
                "V{} failed, and nothing of it was applied (its statements ran in one \
                 transaction, rolled back): {e}",
                m.version
            ))),
            Err(e) => Err(Error::refused(format!(
                "V{} failed: {e}. The history records which statements completed: swivel \
                 migrate status shows them and how to fix forward",
                m.version
            ))),
        }
    }

    /// Two copies of one table in one migration: the second would find the first's kept
    /// original in its way, and one ALTER with both changes copies once.
    fn one_copy_per_table(&self, before: &[(u64, Route)], route: &Route, line: u64) -> Result<()> {
        let copy_of = |r: &Route| match r {
            Route::Online {
                table,
                copies: Some(true) | None,
                ..
            } => Some(table.clone()),
            _ => None,
        };
        let Some(table) = copy_of(route) else {
            return Ok(());
        };
        if self.opts.engine.drop_old_table {
            return Ok(());
        }
        match before
            .iter()
            .find(|(_, r)| copy_of(r).as_ref() == Some(&table))
        {
            Some((first, _)) => Err(Error::refused(format!(
                "lines {first} and {line} both copy {table}: put their actions in one ALTER TABLE \
                 statement (one copy instead of two), or give --drop-old-table (the second swap \
                 needs the name _{}_old the first keeps its original under)",
                table.rsplit('.').next().unwrap_or(&table)
            ))),
            None => Ok(()),
        }
    }

    fn print_lint(&self, m: &Migration) -> Result<()> {
        let mut report = crate::lint::Report::default();
        let text = std::fs::read_to_string(&m.path)
            .map_err(|e| Error::refused(format!("reading {}: {e}", m.path.display())))?;
        crate::lint::lint_text(&m.path, &text, self.session.server(), &mut report)?;
        // What the runner itself makes safe is no finding here: it builds indexes without
        // blocking writes, and runs a large table's type change online.
        let handled = ["require-concurrent-index-creation", "changing-column-type"];
        for f in report
            .findings
            .iter()
            .filter(|f| !handled.contains(&f.rule))
        {
            println!("  lint: line {}: {}: {}", f.line, f.rule, f.message);
        }
        Ok(())
    }

    /// The route of one statement and why (None: transaction control, run as written).
    async fn route(
        &mut self,
        st: &Statement,
        altered: &mut Vec<String>,
    ) -> Result<(Option<Route>, String)> {
        let sql = one_line(&st.sql);
        let server = self.session.server();
        Ok(match route::classify(&st.sql, server)? {
            Kind::Transaction => (None, format!("direct (the file's own transaction): {sql}")),
            Kind::Other => (
                Some(Route::Direct(st.sql.clone())),
                format!("direct: {sql}"),
            ),
            Kind::Index(built) => {
                let how = match server {
                    Server::Postgres => "concurrently",
                    Server::Mysql => "inplace",
                };
                let shown = one_line(&built);
                (Some(Route::Index(built)), format!("{how}: {shown}"))
            }
            Kind::Alter { table, actions } => {
                let changed_before = altered.contains(&table);
                altered.push(table.clone());
                let limit = match self.opts.online_threshold {
                    Threshold::Rows(n) => n,
                    Threshold::Bytes(_) => 1,
                };
                let size = self.session.table_size(&table, limit).await?;
                let online = match (size, self.opts.online_threshold) {
                    (None, _) => false,
                    (Some((rows, _)), Threshold::Rows(n)) => rows >= n,
                    (Some((_, bytes)), Threshold::Bytes(n)) => bytes >= n,
                };
                let measured = match (size, self.opts.online_threshold) {
                    (None, _) => "the table does not exist yet".to_string(),
                    (Some((rows, _)), Threshold::Rows(n)) if rows >= n => {
                        format!("{table} has at least {rows} rows")
                    }
                    (Some((rows, _)), Threshold::Rows(_)) => format!("{table} has {rows} rows"),
                    (Some((_, bytes)), _) => format!("{table} takes {bytes} bytes"),
                };
                let threshold = self.opts.online_threshold;
                if online {
                    let why = format!("({measured}; --online-threshold {threshold}): {sql}");
                    // The engine checks the change now, before any statement runs (unless an
                    // earlier statement changes the table first: then it checks when it runs).
                    let plan = match self.engine_plan(&table, &actions).await {
                        Ok(plan) => plan,
                        Err(e) if changed_before || self.planned > 0 => {
                            let when = if changed_before {
                                "the statements before it have run"
                            } else {
                                "the migrations before it have run"
                            };
                            return Ok((
                                Some(Route::Online {
                                    table,
                                    actions,
                                    copies: None,
                                }),
                                format!(
                                    "online {why}\n      not checked yet: {e} (checked again \
                                     once {when})"
                                ),
                            ));
                        }
                        Err(e) => return Err(e),
                    };
                    let how = if plan.metadata_only {
                        "metadata-only"
                    } else {
                        "online"
                    };
                    // When it runs, the engine prints its plan itself.
                    let lines: String = if self.opts.execute {
                        String::new()
                    } else {
                        plan.lines.iter().map(|l| format!("\n      {l}")).collect()
                    };
                    (
                        Some(Route::Online {
                            table,
                            actions,
                            copies: Some(!plan.metadata_only),
                        }),
                        format!("{how} {why}{lines}"),
                    )
                } else {
                    (
                        Some(Route::Direct(st.sql.clone())),
                        format!("direct ({measured}; --online-threshold {threshold}): {sql}"),
                    )
                }
            }
        })
    }

    /// The online engine's own plan and checks of a change: it refuses here what it would
    /// refuse at run time.
    async fn engine_plan(
        &self,
        table: &str,
        actions: &str,
    ) -> Result<crate::engine::backend::PlanReport> {
        let mut opts = self.engine_options(table, actions);
        opts.execute = false;
        opts.announce = false;
        match crate::engine::migrate::run(opts, std::future::pending()).await? {
            Outcome::Planned(plan) => Ok(plan),
            other => Err(Error::refused(format!(
                "the engine ran a change it was asked only to plan: {other:?}"
            ))),
        }
    }

    fn engine_options(&self, table: &str, actions: &str) -> RunOptions {
        let mut opts = self.opts.engine.clone();
        opts.table = table.to_string();
        opts.alter = actions.to_string();
        opts.execute = true;
        if opts.serve_socket_file.is_none() {
            opts.serve_socket_file = Some(crate::control::socket::default_path(&opts.dsn, table));
        }
        opts
    }

    async fn in_transaction(
        &mut self,
        m: &Migration,
        direction: Direction,
        routes: &[(u64, Route)],
    ) -> Result<()> {
        let user = self.session.user().await?;
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let result = async {
                self.session.execute("BEGIN").await?;
                self.session
                    .set_lock_timeout(self.opts.lock_timeout)
                    .await?;
                let rank = history::insert(&mut self.session, m, direction, &user).await?;
                let mut runs = Vec::new();
                for (line, route) in routes {
                    let Route::Direct(sql) = route else {
                        unreachable!("only direct statements run in one transaction")
                    };
                    self.interruptible(sql).await?;
                    runs.push(StatementRun {
                        line: *line,
                        how: Some(How::Direct),
                        ..Default::default()
                    });
                }
                let ms = started.elapsed().as_millis() as i64;
                history::update(&mut self.session, rank, true, ms, &runs).await?;
                self.session.execute("COMMIT").await
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // A lost session has rolled back by itself.
                    let _ = self.session.execute("ROLLBACK").await;
                    if self.lock_retry(&e, &mut attempt).await {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn statement_by_statement(
        &mut self,
        m: &Migration,
        direction: Direction,
        routes: &[(u64, Route)],
    ) -> Result<()> {
        let user = self.session.user().await?;
        self.session
            .set_lock_timeout(self.opts.lock_timeout)
            .await?;
        let started = Instant::now();
        let rank = history::insert(&mut self.session, m, direction, &user).await?;
        let mut runs = Vec::new();
        for (line, route) in routes {
            let result = self.statement(route).await;
            let ms = started.elapsed().as_millis() as i64;
            match result {
                Ok(mut run) => {
                    run.line = *line;
                    runs.push(run);
                    history::update(&mut self.session, rank, false, ms, &runs).await?;
                }
                Err(e) => {
                    runs.push(StatementRun {
                        line: *line,
                        error: Some(e.to_string()),
                        ..Default::default()
                    });
                    // The statement's error matters more than a failure to record it.
                    if let Err(h) = history::update(&mut self.session, rank, false, ms, &runs).await
                    {
                        tracing::warn!("recording the failure in the history: {h}");
                    }
                    return Err(e);
                }
            }
        }
        let ms = started.elapsed().as_millis() as i64;
        history::update(&mut self.session, rank, true, ms, &runs).await
    }

    /// One statement outside a transaction, with retries on lock timeouts.
    async fn statement(&mut self, route: &Route) -> Result<StatementRun> {
        match route {
            Route::Online { table, actions, .. } => self.online(table, actions).await,
            Route::Direct(sql) => {
                self.retrying(sql, None).await?;
                Ok(StatementRun {
                    how: Some(How::Direct),
                    ..Default::default()
                })
            }
            Route::Index(sql) => {
                let how = match self.session.server() {
                    Server::Postgres => How::Concurrently,
                    Server::Mysql => How::Inplace,
                };
                match self.retrying(sql, Some(how)).await {
                    // ER_ALTER_OPERATION_NOT_SUPPORTED_REASON: this index cannot be built
                    // without blocking writes.
                    Err(e) if e.sqlstate() == Some("1846") => {
                        return Err(Error::refused(format!(
                            "{e}: the server cannot build this index without blocking writes; \
                             write it as ALTER TABLE … ADD INDEX, which swivel copies online \
                             when the table is above --online-threshold"
                        )))
                    }
                    r => r?,
                }
                Ok(StatementRun {
                    how: Some(how),
                    ..Default::default()
                })
            }
        }
    }

    /// Run `sql`, again after a lock timeout (after dropping the invalid index a failed
    /// `CREATE INDEX CONCURRENTLY` leaves behind).
    async fn retrying(&mut self, sql: &str, how: Option<How>) -> Result<()> {
        let mut attempt = 0;
        loop {
            let before = self.invalid_indexes(how).await?;
            match self.interruptible(sql).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.drop_new_invalid_indexes(how, &before).await?;
                    if self.lock_retry(&e, &mut attempt).await {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// After `e`: whether to try again (a lock wait timed out, and attempts are left), once
    /// backed off.
    async fn lock_retry(&self, e: &Error, attempt: &mut u32) -> bool {
        if !lock_timed_out(e) || *attempt >= self.opts.lock_retries {
            return false;
        }
        *attempt += 1;
        println!(
            "  lock wait timed out; retrying ({attempt} of {})",
            self.opts.lock_retries
        );
        tokio::time::sleep(backoff(*attempt)).await;
        true
    }

    /// PostgreSQL's invalid indexes (a failed concurrent build leaves one).
    async fn invalid_indexes(&mut self, how: Option<How>) -> Result<Vec<String>> {
        if how != Some(How::Concurrently) {
            return Ok(Vec::new());
        }
        Ok(self
            .session
            .rows(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid",
            )
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    async fn drop_new_invalid_indexes(
        &mut self,
        how: Option<How>,
        before: &[String],
    ) -> Result<()> {
        for index in self.invalid_indexes(how).await? {
            if !before.contains(&index) {
                println!("  dropping the invalid index {index} the failed build left");
                self.session
                    .execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
                    .await?;
            }
        }
        Ok(())
    }

    /// Run `sql` directly; Ctrl-C (SIGTERM, SIGHUP) cancels it on the server, so that it cannot
    /// complete after the history says it did not.
    async fn interruptible(&mut self, sql: &str) -> Result<()> {
        let mut shutdown = self.shutdown.clone();
        let stopped = tokio::select! {
            r = self.session.execute(sql) => return r,
            _ = shutdown.wait_for(|stop| *stop) => Error::Interrupted(format!("while running `{}`", one_line(sql))),
        };
        let engine = &self.opts.engine;
        if let Err(e) = self
            .session
            .cancel_running(&engine.dsn, engine.password.as_deref())
            .await
        {
            tracing::warn!("cancelling `{}`: {e}", one_line(sql));
        }
        Err(stopped)
    }

    async fn online(&mut self, table: &str, actions: &str) -> Result<StatementRun> {
        let opts = self.engine_options(table, actions);
        let old_table = (!opts.drop_old_table).then(|| {
            let (schema, name) = match table.rsplit_once('.') {
                Some((s, n)) => (format!("{s}."), n),
                None => (String::new(), table),
            };
            format!("{schema}_{name}_old")
        });
        let mut shutdown = self.shutdown.clone();
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        Ok(match crate::engine::migrate::run(opts, stop).await? {
            Outcome::Migrated(stats) => {
                println!(
                    "  online: {} rows copied in {:.1}s, {} changes replayed; writes waited at \
                     most {:.1}ms at cut-over{}",
                    stats.rows_copied,
                    stats.copy_time.as_secs_f64(),
                    stats.changes_applied,
                    stats.cutover.longest_stall.as_secs_f64() * 1000.0,
                    old_table
                        .as_ref()
                        .map_or(String::new(), |t| format!("; the original is kept as {t}"))
                );
                StatementRun {
                    how: Some(How::Online),
                    rows_copied: Some(stats.rows_copied),
                    stall_ms: Some(stats.cutover.longest_stall.as_secs_f64() * 1000.0),
                    old_table,
                    ..Default::default()
                }
            }
            Outcome::MetadataOnly(_) | Outcome::Planned(_) => StatementRun {
                how: Some(How::MetadataOnly),
                ..Default::default()
            },
        })
    }
}

fn lock_timed_out(e: &Error) -> bool {
    // PostgreSQL: lock_not_available; MySQL: ER_LOCK_WAIT_TIMEOUT.
    matches!(e.sqlstate(), Some("55P03" | "1205"))
}

/// How a migration's statements ran, for `status`.
fn describe_runs(runs: &[StatementRun]) -> String {
    runs.iter()
        .map(|r| match (&r.error, r.how) {
            (Some(_), _) => format!("line {}: failed", r.line),
            (None, Some(How::Online)) => format!(
                "line {}: online ({} rows, stall {:.0} ms{})",
                r.line,
                r.rows_copied.unwrap_or(0),
                r.stall_ms.unwrap_or(0.0),
                r.old_table
                    .as_ref()
                    .map_or(String::new(), |t| format!(", kept {t}"))
            ),
            (None, Some(how)) => format!("line {}: {how}", r.line),
            (None, None) => format!("line {}", r.line),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(version: &str, checksum: i32) -> Migration {
        Migration {
            version: version.into(),
            description: format!("m{version}"),
            script: format!("V{version}__m.sql"),
            path: PathBuf::from(format!("m/V{version}__m.sql")),
            checksum,
            up: Vec::new(),
            down: Vec::new(),
            has_down: true,
        }
    }

    fn entry(
        rank: i64,
        version: &str,
        direction: Direction,
        checksum: i32,
        success: bool,
    ) -> Entry {
        Entry {
            rank,
            version: version.into(),
            description: format!("m{version}"),
            direction,
            script: String::new(),
            checksum,
            installed_by: "u".into(),
            installed_on: String::new(),
            execution_ms: 0,
            success,
            statements: Vec::new(),
        }
    }

    fn states(files: &[Migration], history: &[Entry]) -> Vec<(String, State)> {
        versions(files, history)
            .into_iter()
            .map(|v| (v.version, v.state))
            .collect()
    }

    #[test]
    fn the_last_entry_decides_each_version() {
        use Direction::*;
        let files = [file("1", 10), file("2", 20), file("3", 30), file("10", 100)];
        let history = [
            entry(1, "1", Up, 10, true),
            entry(2, "2", Up, 20, true),
            entry(3, "3", Up, 30, true),
            entry(4, "3", Down, 30, true),
        ];
        let got = states(&files, &history);
        let want = [
            ("1", State::Applied),
            ("2", State::Applied),
            ("3", State::Pending),
            ("10", State::Pending),
        ];
        assert_eq!(got, want.map(|(v, s)| (v.to_string(), s)));

        // An edited file, a failed run, a file gone, a version slipped in below an applied one.
        let files = [file("1", 11), file("2", 20), file("3", 30), file("5", 50)];
        let history = [
            entry(1, "1", Up, 10, true),
            entry(2, "4", Up, 40, true),
            entry(3, "5", Up, 50, false),
        ];
        let got = states(&files, &history);
        let want = [
            ("1", State::Drifted),
            ("2", State::OutOfOrder),
            ("3", State::OutOfOrder),
            ("4", State::Missing),
            ("5", State::Failed),
        ];
        assert_eq!(got, want.map(|(v, s)| (v.to_string(), s)));
        assert_eq!(problems(&versions(&files, &history), "m".as_ref()).len(), 5);
    }

    #[test]
    fn thresholds_are_rows_or_bytes() {
        assert_eq!(Threshold::parse("1000000"), Ok(Threshold::Rows(1_000_000)));
        assert_eq!(Threshold::parse("1GB"), Ok(Threshold::Bytes(1 << 30)));
        assert!(Threshold::parse("lots").is_err());
    }
}
