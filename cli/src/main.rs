//! `headroom`: operator commands.

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
    /// The schema catalogue: subjects, versions and pinned ids.
    Schemas,
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Create missing topics on the broker; fail on a mismatch.
    Apply(TopologyArgs),
    /// Validate the topology file without a broker.
    Check(TopologyFile),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Topology {
            action: TopologyAction::Check(f),
        } => {
            let t = load_topology(&f)?;
            println!("topology is valid: {} topics", t.topics.len());
        }
        Command::Topology {
            action: TopologyAction::Apply(args),
        } => {
            let t = load_topology(&args.file)?;
            let kafka = KafkaConfig {
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
        Command::Schemas => {
            for e in headroom_schemas::Catalogue::builtin().entries() {
                println!("{:6} {} v{} ({})", e.id, e.subject, e.version, e.file);
            }
        }
    }
    Ok(())
}

fn toml_from_str<T: serde::de::DeserializeOwned>(s: &str) -> anyhow::Result<T> {
    Ok(toml::from_str(s)?)
}
