//! `headroom`: operator commands.

mod schemas;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use headroom_features::{FeatureConfig, FeatureLayout};
use headroom_runtime::topology::{self, Topology};
use headroom_runtime::KafkaConfig;

#[derive(Parser)]
#[command(version, about = "headroom operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The topic graph in topologies/.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// The feature set the featurizer produces with the default (or given) configuration.
    Features {
        /// A TOML file with a [features] table as in the featurizer's configuration.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The schema catalogue: subjects, versions and pinned ids (`register` puts it into a
    /// schema registry).
    Schemas {
        #[command(subcommand)]
        action: Option<SchemasAction>,
    },
    /// PostgreSQL: apply the migrations of sql/migrations/.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Run an analytical query of sql/queries/ over a time range; one JSON object per row.
    /// Without a name, lists the queries.
    Query(QueryArgs),
    /// The Parquet archive of raw telemetry (the sink's archive.root), queried with DataFusion.
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
    },
}

#[derive(Subcommand)]
enum ArchiveAction {
    /// Run SQL over the archive's `telemetry` table (columns of telemetry_raw, plus `date` and
    /// `hour` from the directories): a named query of sql/archive/ or your own.
    Query {
        /// The archive's root directory.
        #[arg(long, env = "HEADROOM_ARCHIVE_ROOT")]
        root: PathBuf,
        /// A named query (see `headroom archive presets`).
        #[arg(long, conflicts_with = "sql")]
        preset: Option<String>,
        /// SQL (DataFusion's dialect).
        sql: Option<String>,
    },
    /// List the named queries.
    Presets,
}

#[derive(Subcommand)]
enum SchemasAction {
    /// Register every catalogue version in a Confluent-compatible schema registry under its
    /// pinned id (IMPORT mode per subject, then READWRITE again). Idempotent; fails on an id
    /// or version the registry holds differently.
    Register {
        #[arg(long, env = "HEADROOM_SCHEMA_REGISTRY_URL")]
        registry_url: String,
    },
}

#[derive(Subcommand)]
enum DbAction {
    /// Apply pending migrations (idempotent; safe while sinks run).
    Migrate(PgArgs),
}

#[derive(clap::Args)]
struct PgArgs {
    #[arg(long, env = "HEADROOM_PG_URL", default_value = "postgres://headroom@127.0.0.1:5432/headroom")]
    pg_url: String,
    /// A file holding the password (a mounted secret), put into the URL: credentials stay out
    /// of the command line and the environment.
    #[arg(long, env = "HEADROOM_PG_PASSWORD_FILE")]
    pg_password_file: Option<PathBuf>,
}

impl PgArgs {
    /// The URL with the password file's content in it, when one is given.
    fn url(&self) -> anyhow::Result<String> {
        let Some(path) = &self.pg_password_file else {
            return Ok(self.pg_url.clone());
        };
        let pw = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--pg-password-file {}: {e}", path.display()))?;
        headroom_store::with_password(&self.pg_url, pw.trim_end_matches(['\n', '\r']))
            .map_err(|e| anyhow::anyhow!("--pg-url: {e}"))
    }
}

#[derive(clap::Args)]
struct QueryArgs {
    /// hourly_by_service, percentiles_daily, anomalies, cost_daily, savings.
    name: Option<String>,
    /// Start of the range: anything PostgreSQL reads as a timestamptz (`2013-08-01`,
    /// `2026-11-24 10:00+00`). Default: `--last` before `--to`.
    #[arg(long)]
    from: Option<String>,
    /// End of the range (exclusive). Default: now.
    #[arg(long)]
    to: Option<String>,
    /// Length of the range when --from is not given.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    last: Duration,
    /// Ask the raw table instead of the rollups (slower; for comparison).
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    pg: PgArgs,
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Create missing topics on the broker; fail on a mismatch.
    Apply(TopologyArgs),
    /// Validate the topology file without a broker.
    Check(TopologyFile),
    /// Print the Kafka ACLs each service needs on a cluster that enforces them, as
    /// `kafka-acls.sh` commands: topics from the graph, consumer groups and their shadow groups.
    Acls(AclArgs),
}

#[derive(clap::Args)]
struct AclArgs {
    #[command(flatten)]
    file: TopologyFile,
    /// Prefix for every topic name, as given to `topology apply`.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Each service's principal; `{service}` is replaced by the service's name.
    #[arg(long, default_value = "User:headroom-{service}")]
    principal: String,
}

#[derive(clap::Args)]
struct TopologyFile {
    /// Topology file (default: the built-in topologies/headroom.toml).
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TopologyArgs {
    #[command(flatten)]
    file: TopologyFile,
    #[arg(long, env = "HEADROOM_BROKERS", default_value = "127.0.0.1:19092")]
    brokers: String,
    /// Prefix for every topic name (isolated test or demo namespaces).
    #[arg(long, default_value = "")]
    prefix: String,
    /// librdkafka properties, KEY=VALUE (repeatable), e.g. security.protocol=SASL_SSL.
    #[arg(long = "property", value_parser = parse_kv)]
    properties: Vec<(String, String)>,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// The topology's ACLs ([`Topology::acls`]) as `kafka-acls.sh` commands, one per service and
/// resource, grouped by service.
fn acl_commands(t: &Topology, prefix: &str, principal: &str) -> String {
    use std::fmt::Write as _;
    use topology::AclResource;
    let mut out = String::from(
        "# Kafka ACLs of the headroom services, from the topology. Run with an admin connection\n\
         # (add --command-config <admin.properties> for a secured one); BROKERS is its address.\n",
    );
    for t in t.topics.iter().filter(|t| t.producers.iter().any(|p| p == topology::EXTERNAL_PRODUCER)) {
        let _ = writeln!(
            out,
            "# The fleet's own publishers of {prefix}{} need Write on it (and IdempotentWrite on the cluster before Kafka 2.8).",
            t.name
        );
    }
    let mut service = String::new();
    for a in t.acls(prefix) {
        if a.service != service {
            service.clone_from(&a.service);
            let what = if a.service == topology::ACL_INIT_SERVICE {
                "the principal that applies the topology (headroom topology apply, the init job)"
            } else {
                "service"
            };
            let who = principal.replace("{service}", &a.service);
            let _ = writeln!(out, "\n# {service}, {what}: {who}");
        }
        let who = principal.replace("{service}", &a.service);
        let resource = match a.resource {
            AclResource::Topic => format!("--topic '{}'", a.name),
            AclResource::Group => format!("--group '{}'", a.name),
            AclResource::Cluster => "--cluster".to_owned(),
        };
        let ops: Vec<String> = a.operations.iter().map(|o| format!("--operation {o}")).collect();
        let _ = writeln!(
            out,
            "kafka-acls.sh --bootstrap-server \"$BROKERS\" --add --allow-principal '{who}' {} {resource}",
            ops.join(" ")
        );
    }
    out
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn load_topology(f: &TopologyFile) -> anyhow::Result<Topology> {
    Ok(match &f.file {
        Some(p) => Topology::parse(
            &std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        )?,
        None => Topology::builtin(),
    })
}

fn archive(action: ArchiveAction) -> anyhow::Result<()> {
    use headroom_archive::query;
    match action {
        ArchiveAction::Presets => {
            for p in query::PRESETS {
                println!("{:<14} {}", p.name, p.about);
            }
        }
        ArchiveAction::Query { root, preset, sql } => {
            let sql = match (preset, sql) {
                (Some(name), _) => query::preset(&name)
                    .ok_or_else(|| anyhow::anyhow!("no preset `{name}` (see `headroom archive presets`)"))?
                    .sql
                    .to_owned(),
                (None, Some(sql)) => sql,
                (None, None) => anyhow::bail!("give --preset NAME or the SQL to run"),
            };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let batches = rt.block_on(query::run(&root, &sql))?;
            println!("{}", query::pretty(&batches)?);
            eprintln!("{} rows", batches.iter().map(|b| b.num_rows()).sum::<usize>());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Archive { action } => archive(action)?,
        Command::Topology {
            action: TopologyAction::Check(f),
        } => {
            let t = load_topology(&f)?;
            println!("topology is valid: {} topics", t.topics.len());
        }
        Command::Topology {
            action: TopologyAction::Acls(args),
        } => {
            let t = load_topology(&args.file)?;
            print!("{}", acl_commands(&t, &args.prefix, &args.principal));
        }
        Command::Topology {
            action: TopologyAction::Apply(args),
        } => {
            let t = load_topology(&args.file)?;
            let kafka = KafkaConfig {
                instance_id: String::new(),
                brokers: args.brokers.clone(),
                group_id: "headroom-cli".into(),
                properties: args.properties.into_iter().collect(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(topology::apply(&t, &kafka, &args.prefix, args.timeout))?;
            for n in &report.created {
                println!("created  {n}");
            }
            for n in &report.existing {
                println!("ok       {n}");
            }
            for n in &report.unverified {
                println!("warning  {n}: the broker did not answer DescribeConfigs; retention and cleanup not verified");
            }
        }
        Command::Features { config } => {
            let cfg = match config {
                Some(p) => {
                    #[derive(serde::Deserialize)]
                    struct Wrapper {
                        #[serde(default)]
                        features: FeatureConfig,
                    }
                    let text = std::fs::read_to_string(&p)?;
                    toml_from_str::<Wrapper>(&text)?.features
                }
                None => FeatureConfig::default(),
            };
            cfg.validate()?;
            let layout = FeatureLayout::new(&cfg);
            println!("feature_set {} ({} features)", layout.id(), layout.len());
            for (i, n) in layout.names().iter().enumerate() {
                println!("{i:4} {n}");
            }
        }
        Command::Db {
            action: DbAction::Migrate(pg),
        } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let pool = headroom_store::pool(&pg.url()?, 1, Duration::from_secs(10)).await?;
                headroom_store::migrate(&pool).await?;
                pool.close().await;
                anyhow::Ok(())
            })?;
            println!("migrations applied to {}", headroom_store::redact(&pg.pg_url));
        }
        Command::Query(args) => {
            let Some(name) = args.name.as_deref() else {
                for q in headroom_store::queries::QUERIES {
                    println!("{:20} {}", q.name, q.about);
                }
                return Ok(());
            };
            let q = headroom_store::queries::find(name).ok_or_else(|| {
                anyhow::anyhow!("no query `{name}`; `headroom query` lists them")
            })?;
            let sql = if args.raw {
                q.raw_sql.ok_or_else(|| anyhow::anyhow!("`{name}` has no raw-table form"))?
            } else {
                q.sql
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let rows = rt.block_on(async {
                let mut c = headroom_store::connect(&args.pg.url()?, Duration::from_secs(10)).await?;
                let to = args.to.clone().unwrap_or_else(|| "now".into());
                let from = match &args.from {
                    Some(f) => f.clone(),
                    None => {
                        let secs = args.last.as_secs_f64();
                        sqlx::query_scalar::<_, String>(
                            "SELECT ($1::timestamptz - make_interval(secs => $2))::text",
                        )
                        .bind(&to)
                        .bind(secs)
                        .fetch_one(&mut c)
                        .await?
                    }
                };
                let started = std::time::Instant::now();
                let rows = headroom_store::queries::rows_as_json_between(&mut c, sql, &from, &to).await?;
                eprintln!("{} rows in {:.1} ms ({from} .. {to})", rows.len(), started.elapsed().as_secs_f64() * 1000.0);
                anyhow::Ok(rows)
            })?;
            for r in rows {
                println!("{r}");
            }
        }
        Command::Schemas { action: None } => {
            for e in headroom_schemas::Catalogue::builtin().entries() {
                println!("{:6} {} v{} ({})", e.id, e.subject, e.version, e.file);
            }
        }
        Command::Schemas { action: Some(SchemasAction::Register { registry_url }) } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let report = rt.block_on(schemas::register(&registry_url, headroom_schemas::Catalogue::builtin()))?;
            for (subject, version, id) in &report.registered {
                println!("registered {subject} v{version} as id {id}");
            }
            println!(
                "{} schema versions registered, {} already present at {registry_url}",
                report.registered.len(),
                report.present.len()
            );
        }
    }
    Ok(())
}

fn toml_from_str<T: serde::de::DeserializeOwned>(s: &str) -> anyhow::Result<T> {
    Ok(toml::from_str(s)?)
}
