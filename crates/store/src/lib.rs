//! headroom's PostgreSQL store: the migrations under `sql/migrations/` (embedded, applied by
//! sqlx's migrator), the time-partitioned tables and their retention, the binary `COPY`
//! encoder, the sink's transactional offsets, and the model registry.
//!
//! No Kafka here: the sink service, the CLI and the OLAP benchmark share this crate.

pub mod copy;
pub mod offsets;
pub mod partitions;
pub mod queries;
pub mod registry;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub use copy::{CopyBuf, RowKey};
pub use partitions::{Span, TableSpec, TABLES};

/// The migrations, in order. Files are never edited once released: a change is a new file.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "sink tables",
        include_str!("../../../sql/migrations/0001_sink_tables.sql"),
    ),
    (
        2,
        "retrain runs",
        include_str!("../../../sql/migrations/0002_retrain_runs.sql"),
    ),
    (
        3,
        "model registry",
        include_str!("../../../sql/migrations/0003_model_registry.sql"),
    ),
    (
        4,
        "faster rollups",
        include_str!("../../../sql/migrations/0004_faster_rollups.sql"),
    ),
    (
        5,
        "archive hours, rollup sums of squares",
        include_str!("../../../sql/migrations/0005_archive_and_squares.sql"),
    ),
    (
        6,
        "MLflow run ids of retrain runs",
        include_str!("../../../sql/migrations/0006_mlflow_runs.sql"),
    ),
    (
        7,
        "anomaly baseline index",
        include_str!("../../../sql/migrations/0007_anomaly_baseline_index.sql"),
    ),
    (
        8,
        "anomalies scored at write time",
        include_str!("../../../sql/migrations/0008_anomalies_at_write_time.sql"),
    ),
];

/// sqlx's migrator over the embedded migrations (it records them in `_sqlx_migrations`,
/// checks the checksums of those already applied, and takes an advisory lock so that
/// concurrent starters do not race).
pub fn migrator() -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(v, d, sql)| {
            Migration::new(
                *v,
                Cow::Borrowed(*d),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// Applies the pending migrations.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    migrator()
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))
}

/// Connection options from a URL, without sqlx's per-statement logging (the sink's statements
/// are few and large; its own spans and metrics say what it does).
///
/// Sessions run with PostgreSQL's JIT compiler off unless the URL's `options` set `jit` itself
/// (`?options=-c%20jit%3Don`). The project's statements are dashboard queries, batch merges and
/// window scans that finish in milliseconds to a few seconds; JIT compiles any plan whose cost
/// estimate passes `jit_above_cost`, which these routinely do, and the compilation costs more
/// than it saves: measured at 30 M rows, the anomaly query 37 → 25 ms and its raw twin
/// 566 → 129 ms, every other raw twin 4–25 % faster (docs/benchmarks.md).
pub fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|e| anyhow::anyhow!("postgres url `{}`: {e}", redact(url)))?;
    let opts = if opts.get_options().is_some_and(|o| o.contains("jit")) { opts } else { opts.options([("jit", "off")]) };
    Ok(opts
        .application_name("headroom")
        .disable_statement_logging())
}

/// One connection (the sink's writer keeps its own, with its session's staging tables).
pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<PgConnection> {
    let opts = connect_options(url)?;
    tokio::time::timeout(timeout, opts.connect())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {}: timed out after {timeout:?}", redact(url)))?
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", redact(url)))
}

/// A small pool (for commands and the sink's offset loader).
pub async fn pool(url: &str, max: u32, timeout: Duration) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(timeout)
        .connect_with(connect_options(url)?)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", redact(url)))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// True when an error means the connection (or the server) is gone, as opposed to a problem
/// with the statement or the data: the caller reconnects and retries the same batch.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // Class 08 (connection exception), 57P01..57P03 (admin shutdown, crash shutdown,
            // cannot connect now), 53300 (too many connections).
            db.code().is_some_and(|c| {
                c.starts_with("08") || c.starts_with("57P") || c == "53300"
            })
        }
        sqlx::Error::Protocol(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn migrations_are_ordered_and_named() {
        let m = migrator();
        let versions: Vec<i64> = m.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(versions, sorted);
        assert!(m.iter().all(|m| !m.sql.trim().is_empty()));
    }
}

/// `url` with `password` (percent-encoded) in its user info (for passwords from mounted
/// secret files, which never belong in a URL in configuration).
pub fn with_password(url: &str, password: &str) -> Result<String, String> {
    let bad = || "key `postgres.url` needs a user (postgres://USER@HOST/DB) to take a password".to_owned();
    let scheme_end = url.find("://").ok_or_else(bad)? + 3;
    let at = url[scheme_end..].find('@').ok_or_else(bad)? + scheme_end;
    let user = url[scheme_end..at].split(':').next().unwrap_or_default();
    let enc = percent_encode(password);
    Ok(format!("{}{user}:{enc}{}", &url[..scheme_end], &url[at..]))
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a URL's user info, a
/// path segment or a query value).
pub fn percent_encode(s: &str) -> String {
    let mut enc = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    enc
}

#[cfg(test)]
mod migration_tests {
    use super::MIGRATIONS;

    /// A migration file that is not in the list would never be applied.
    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = headroom_testkit::repo_root().join("sql/migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("sql/migrations")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "files {files:?}");
        for (f, (v, _, sql)) in files.iter().zip(MIGRATIONS) {
            assert!(f.starts_with(&format!("{v:04}_")), "{f} is not migration {v}");
            let on_disk = std::fs::read_to_string(dir.join(f)).expect("read");
            assert_eq!(&on_disk, sql, "{f} differs from what is embedded");
        }
    }
}
