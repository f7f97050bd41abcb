//! Where the training data comes from: a CSV trace or generated telemetry.

use std::path::PathBuf;

use clap::Args;
use headroom_schemas::Telemetry;
use headroom_sources::{trace, GenConfig, Generator};

#[derive(Args, Clone, Debug)]
pub struct SourceArgs {
    /// A CSV trace: the Bitbrains .tar.gz (or a directory of its CSV files), or a generic CSV.
    #[arg(long, conflicts_with = "generate_entities")]
    pub trace: Option<PathBuf>,
    /// `bitbrains`, or `generic` with --ts-column, --entity-column and --map.
    #[arg(long, default_value = "bitbrains")]
    pub trace_format: String,
    #[arg(long, default_value = "timestamp")]
    pub ts_column: String,
    #[arg(long, default_value = "entity")]
    pub entity_column: String,
    /// FIELD=COLUMN pairs of a generic CSV, e.g. cpu_util=cpu,mem_util=memory.
    #[arg(long, default_value = "")]
    pub map: String,
    /// Read at most this many VM files of a Bitbrains trace.
    #[arg(long)]
    pub max_vms: Option<usize>,
    /// Generated telemetry instead of a trace: this many entities…
    #[arg(long)]
    pub generate_entities: Option<u32>,
    /// …over this many days, at the sampling interval.
    #[arg(long, default_value_t = 14)]
    pub generate_days: u32,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

impl SourceArgs {
    pub fn describe(&self) -> String {
        match (&self.trace, self.generate_entities) {
            (Some(p), _) => format!("the {} trace {}", self.trace_format, p.display()),
            (None, Some(n)) => format!("{n} generated entities over {} days", self.generate_days),
            (None, None) => "nothing".into(),
        }
    }

    pub fn read(&self) -> anyhow::Result<Vec<Telemetry>> {
        match (&self.trace, self.generate_entities) {
            (Some(path), _) => match self.trace_format.as_str() {
                "bitbrains" => trace::read_bitbrains(path, self.max_vms),
                "generic" => trace::read_generic(
                    path,
                    &trace::Mapping::parse(&self.ts_column, &self.entity_column, &self.map)?,
                ),
                other => anyhow::bail!("unknown --trace-format `{other}` (bitbrains or generic)"),
            },
            (None, Some(n)) => {
                anyhow::ensure!(n > 0 && self.generate_days > 0, "nothing to generate");
                let mut g = Generator::new(GenConfig {
                    entities: Some(n),
                    seed: self.seed,
                    ..GenConfig::default()
                });
                let step = g.interval_ms();
                // A fixed, aligned start: the same arguments give the same data.
                let start = 1_700_000_000_000 / step * step;
                let rounds = i64::from(self.generate_days) * 86_400_000 / step;
                let mut out = Vec::with_capacity(rounds as usize * g.entity_count());
                for r in 0..rounds {
                    for i in 0..g.entity_count() {
                        out.push(g.sample(i, start + r * step));
                    }
                }
                Ok(out)
            }
            (None, None) => anyhow::bail!("give a --trace or --generate-entities"),
        }
    }
}
