//! CSV traces: the Bitbrains GWA-T-12 format (`;\t`-separated, one file per VM, read straight
//! from the `.tar.gz` or from a directory) and a generic `timestamp + columns` format with a
//! column mapping. Rows become [`Telemetry`] records sorted by event time.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use headroom_schemas::Telemetry;

use crate::generator::{PRICE_GIB_HOUR, PRICE_VCPU_HOUR};

/// Which columns of a generic CSV hold what.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    pub timestamp: String,
    pub entity: String,
    /// telemetry field name -> CSV column
    pub fields: HashMap<String, String>,
}

impl Mapping {
    /// Parses `cpu_util=cpu,mem_util=memory,...`.
    pub fn parse(timestamp: &str, entity: &str, spec: &str) -> anyhow::Result<Mapping> {
        let mut fields = HashMap::new();
        for pair in spec.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("mapping `{pair}` is not FIELD=COLUMN"))?;
            const KNOWN: [&str; 9] = [
                "cpu_util",
                "mem_util",
                "net_in_bps",
                "net_out_bps",
                "disk_read_bps",
                "disk_write_bps",
                "cpu_cores",
                "mem_bytes",
                "cost_per_hour",
            ];
            anyhow::ensure!(
                KNOWN.contains(&k),
                "mapping: unknown telemetry field `{k}` (known: {})",
                KNOWN.join(", ")
            );
            fields.insert(k.to_owned(), v.to_owned());
        }
        Ok(Mapping {
            timestamp: timestamp.into(),
            entity: entity.into(),
            fields,
        })
    }
}

/// Reads the Bitbrains trace (`.tar.gz` or directory). `max_vms` limits how many VM files are read.
pub fn read_bitbrains(path: &Path, max_vms: Option<usize>) -> anyhow::Result<Vec<Telemetry>> {
    let mut out = Vec::new();
    let mut files = 0usize;
    let add = |name: &str, text: &str, out: &mut Vec<Telemetry>| -> anyhow::Result<()> {
        let vm = Path::new(name)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(name)
            .to_owned();
        parse_bitbrains_csv(&vm, text, out).with_context(|| format!("parsing {name}"))
    };
    if path.is_dir() {
        let mut entries: Vec<_> = walk_csv(path)?;
        entries.sort();
        for p in entries {
            if max_vms.is_some_and(|m| files >= m) {
                break;
            }
            add(
                &p.display().to_string(),
                &std::fs::read_to_string(&p)?,
                &mut out,
            )?;
            files += 1;
        }
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.display().to_string();
            if !name.ends_with(".csv") {
                continue;
            }
            if max_vms.is_some_and(|m| files >= m) {
                break;
            }
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            add(&name, &text, &mut out)?;
            files += 1;
        }
    }
    anyhow::ensure!(files > 0, "{}: no CSV files found", path.display());
    out.sort_by(|a, b| {
        a.ts_ms
            .cmp(&b.ts_ms)
            .then_with(|| a.entity_id.cmp(&b.entity_id))
    });
    Ok(out)
}

fn walk_csv(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            v.extend(walk_csv(&p)?);
        } else if p.extension().is_some_and(|x| x == "csv") {
            v.push(p);
        }
    }
    Ok(v)
}

/// One VM's file. The timestamp column is named `[ms]` but holds epoch seconds.
pub fn parse_bitbrains_csv(vm: &str, text: &str, out: &mut Vec<Telemetry>) -> anyhow::Result<()> {
    let mut lines = text.lines();
    let header = lines.next().context("empty file")?;
    let cols: Vec<&str> = header.split(';').map(str::trim).collect();
    let idx = |name: &str| {
        cols.iter()
            .position(|c| c.starts_with(name))
            .with_context(|| format!("no column `{name}`"))
    };
    let (its, icores, icpu, imemcap, imem, idr, idw, inr, int) = (
        idx("Timestamp")?,
        idx("CPU cores")?,
        idx("CPU usage [%]")?,
        idx("Memory capacity provisioned")?,
        idx("Memory usage")?,
        idx("Disk read")?,
        idx("Disk write")?,
        idx("Network received")?,
        idx("Network transmitted")?,
    );
    let entity = format!("bitbrains-rnd/{vm}");
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(';').map(str::trim).collect();
        let num = |i: usize| -> Option<f64> {
            f.get(i)
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|v| v.is_finite())
        };
        let Some(ts_s) = num(its) else {
            anyhow::bail!("line {}: bad timestamp", n + 2);
        };
        let cores = num(icores);
        let mem_cap_kb = num(imemcap);
        let mem_util = match (num(imem), mem_cap_kb) {
            (Some(u), Some(c)) if c > 0.0 => Some((u / c).clamp(0.0, 1.5)),
            _ => None,
        };
        let mem_gib = mem_cap_kb.map(|k| k / 1_048_576.0);
        out.push(Telemetry {
            entity_id: entity.clone(),
            ts_ms: (ts_s * 1000.0) as i64,
            service: None,
            cluster: Some("bitbrains-rnd".into()),
            cpu_util: num(icpu).map(|p| (p / 100.0).clamp(0.0, 1.5)),
            mem_util,
            net_in_bps: num(inr).map(|k| k * 1024.0),
            net_out_bps: num(int).map(|k| k * 1024.0),
            disk_read_bps: num(idr).map(|k| k * 1024.0),
            disk_write_bps: num(idw).map(|k| k * 1024.0),
            cpu_cores: cores,
            mem_bytes: mem_cap_kb.map(|k| k * 1024.0),
            replicas: Some(1),
            cost_per_hour: match (cores, mem_gib) {
                (Some(c), Some(m)) => Some(c * PRICE_VCPU_HOUR + m * PRICE_GIB_HOUR),
                _ => None,
            },
            scale_event: None,
            labels: Vec::new(),
        });
    }
    Ok(())
}

/// A generic CSV: one row per sample, a timestamp column (epoch seconds or milliseconds), an
/// entity column, and mapped metric columns.
pub fn read_generic(path: &Path, mapping: &Mapping) -> anyhow::Result<Vec<Telemetry>> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let headers = rdr.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no column `{name}`", path.display()))
    };
    let its = col(&mapping.timestamp)?;
    let ient = col(&mapping.entity)?;
    let mut fields = Vec::new();
    for (field, column) in &mapping.fields {
        fields.push((field.clone(), col(column)?));
    }
    let mut out = Vec::new();
    for (n, rec) in rdr.records().enumerate() {
        let rec = rec?;
        let ts: f64 = rec
            .get(its)
            .unwrap_or("")
            .parse()
            .with_context(|| format!("row {}: bad timestamp", n + 2))?;
        let ts_ms = if ts < 1e11 {
            (ts * 1000.0) as i64
        } else {
            ts as i64
        };
        let mut t = Telemetry {
            entity_id: rec.get(ient).unwrap_or("").to_owned(),
            ts_ms,
            ..Telemetry::default()
        };
        for (field, i) in &fields {
            let v = rec.get(*i).and_then(|s| s.parse::<f64>().ok());
            match field.as_str() {
                "cpu_util" => t.cpu_util = v,
                "mem_util" => t.mem_util = v,
                "net_in_bps" => t.net_in_bps = v,
                "net_out_bps" => t.net_out_bps = v,
                "disk_read_bps" => t.disk_read_bps = v,
                "disk_write_bps" => t.disk_write_bps = v,
                "cpu_cores" => t.cpu_cores = v,
                "mem_bytes" => t.mem_bytes = v,
                "cost_per_hour" => t.cost_per_hour = v,
                _ => {}
            }
        }
        out.push(t);
    }
    out.sort_by_key(|t| t.ts_ms);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_bitbrains_format() {
        let text = "Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%];\tMemory capacity provisioned [KB];\tMemory usage [KB];\tDisk read throughput [KB/s];\tDisk write throughput [KB/s];\tNetwork received throughput [KB/s];\tNetwork transmitted throughput [KB/s]\n\
1372629804;\t4;\t11703.99;\t245.78;\t2.1;\t8388608;\t2097152;\t0.0;\t5.5;\t1.25;\t0.5\n";
        let mut out = Vec::new();
        parse_bitbrains_csv("7", text, &mut out).expect("parse");
        let t = &out[0];
        assert_eq!(t.entity_id, "bitbrains-rnd/7");
        assert_eq!(t.ts_ms, 1_372_629_804_000);
        assert!((t.cpu_util.expect("cpu") - 0.021).abs() < 1e-9);
        assert!((t.mem_util.expect("mem") - 0.25).abs() < 1e-9);
        assert_eq!(t.net_in_bps, Some(1280.0));
        assert_eq!(t.cpu_cores, Some(4.0));
    }

    #[test]
    fn generic_mapping_is_checked() {
        assert!(Mapping::parse("ts", "vm", "cpu_util=c,bogus=x").is_err());
        let dir = std::env::temp_dir().join(format!("hr-generic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("t.csv");
        std::fs::write(&p, "time,host,c\n1700000300,a,0.5\n1700000000,a,0.25\n").expect("write");
        let m = Mapping::parse("time", "host", "cpu_util=c").expect("mapping");
        let rows = read_generic(&p, &m).expect("read");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ts_ms, 1_700_000_000_000);
        assert_eq!(rows[0].cpu_util, Some(0.25));
    }
}
