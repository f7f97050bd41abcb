//! Synthetic fleet telemetry with the first seed document's shape: services × clusters,
//! business-hours and weekday peaks, about 3 % scale events, 1–2 % anomalies, 1 % missing
//! values. Deterministic for a given seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use headroom_schemas::Telemetry;

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub services: u32,
    pub clusters: u32,
    /// Overrides services × clusters (entities are then `vm-000123`).
    pub entities: Option<u32>,
    pub interval_ms: i64,
    pub seed: u64,
    pub anomaly_rate: f64,
    pub missing_rate: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            services: 20,
            clusters: 5,
            entities: None,
            interval_ms: 300_000,
            seed: 7,
            anomaly_rate: 0.015,
            missing_rate: 0.01,
        }
    }
}

#[derive(Debug, Clone)]
struct Profile {
    id: String,
    service: Option<String>,
    cluster: Option<String>,
    base: f64,
    amp: f64,
    tz_shift_h: f64,
    cores_per_replica: f64,
    mem_gib_per_replica: f64,
    replicas: i32,
    net_scale: f64,
    mem_base: f64,
}

/// Produces one sample per entity per round; round `r` is at `start_ms + r * interval`.
#[derive(Debug)]
pub struct Generator {
    cfg: GenConfig,
    profiles: Vec<Profile>,
    rng: SmallRng,
    noise: Normal<f64>,
}

pub const PRICE_VCPU_HOUR: f64 = 0.0425;
pub const PRICE_GIB_HOUR: f64 = 0.0057;

impl Generator {
    pub fn new(cfg: GenConfig) -> Generator {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let mut profiles = Vec::new();
        let mut push =
            |id: String, service: Option<String>, cluster: Option<String>, rng: &mut SmallRng| {
                profiles.push(Profile {
                    id,
                    service,
                    cluster,
                    base: rng.random_range(0.08..0.35),
                    amp: rng.random_range(0.4..1.4),
                    tz_shift_h: [0.0, 0.0, 1.0, -5.0, 8.0][rng.random_range(0..5)],
                    cores_per_replica: [1.0, 2.0, 4.0, 8.0][rng.random_range(0..4)],
                    mem_gib_per_replica: [2.0, 4.0, 8.0, 16.0][rng.random_range(0..4)],
                    replicas: rng.random_range(2..8),
                    net_scale: 10f64.powf(rng.random_range(5.0..7.5)),
                    mem_base: rng.random_range(0.2..0.5),
                });
            };
        match cfg.entities {
            Some(n) => {
                for i in 0..n {
                    push(
                        format!("vm-{i:06}"),
                        None,
                        Some(format!("cluster-{:02}", i % 5)),
                        &mut rng,
                    );
                }
            }
            None => {
                for s in 0..cfg.services {
                    for c in 0..cfg.clusters {
                        push(
                            format!("service-{s:03}.cluster-{c:02}"),
                            Some(format!("service-{s:03}")),
                            Some(format!("cluster-{c:02}")),
                            &mut rng,
                        );
                    }
                }
            }
        }
        Generator {
            cfg,
            profiles,
            rng,
            noise: Normal::new(0.0, 1.0).expect("normal"),
        }
    }

    pub fn entity_count(&self) -> usize {
        self.profiles.len()
    }

    pub fn entity_id(&self, i: usize) -> &str {
        &self.profiles[i].id
    }

    pub fn interval_ms(&self) -> i64 {
        self.cfg.interval_ms
    }

    /// `rounds` consecutive samples of every entity from `start_ms` (aligned down to the
    /// sampling interval), in time order: the fleet as tests and benchmarks replay it.
    pub fn rounds(&mut self, start_ms: i64, rounds: i64) -> Vec<Telemetry> {
        let step = self.cfg.interval_ms;
        let start = start_ms.div_euclid(step) * step;
        let mut out = Vec::with_capacity(rounds.max(0) as usize * self.entity_count());
        for r in 0..rounds {
            for i in 0..self.entity_count() {
                out.push(self.sample(i, start + r * step));
            }
        }
        out
    }

    /// The sample of entity `i` at `ts_ms`.
    pub fn sample(&mut self, i: usize, ts_ms: i64) -> Telemetry {
        let p = &mut self.profiles[i];
        let days = ts_ms.div_euclid(86_400_000);
        let dow = (days + 3).rem_euclid(7); // 0 = Monday
        let hour =
            (ts_ms.rem_euclid(86_400_000) as f64 / 3_600_000.0 + p.tz_shift_h).rem_euclid(24.0);
        let weekend = dow >= 5;
        // Smooth business-hours bump between 08:00 and 18:00.
        let bump = if (8.0..18.0).contains(&hour) {
            (std::f64::consts::PI * (hour - 8.0) / 10.0).sin().powi(2)
        } else {
            0.0
        };
        let weekly = if weekend {
            0.55
        } else if dow == 0 {
            1.08
        } else {
            1.0
        };
        let n = |rng: &mut SmallRng, noise: &Normal<f64>, s: f64| noise.sample(rng) * s;
        let mut cpu = p.base * weekly * (1.0 + p.amp * bump) + n(&mut self.rng, &self.noise, 0.02);
        // Scale events concentrate in the peaks: about 3 % of samples overall.
        let peak = bump > 0.5 && !weekend;
        let scale_event = self.rng.random::<f64>() < if peak { 0.16 } else { 0.007 };
        if scale_event {
            p.replicas = (p.replicas + if self.rng.random::<bool>() { 1 } else { -1 }).clamp(1, 20);
        }
        if self.rng.random::<f64>() < self.cfg.anomaly_rate {
            cpu = if self.rng.random::<bool>() {
                cpu * self.rng.random_range(2.0..3.5)
            } else {
                cpu * 0.05
            };
        }
        let cpu = cpu.clamp(0.0, 1.0);
        let mem = (p.mem_base + 0.45 * cpu + n(&mut self.rng, &self.noise, 0.015)).clamp(0.0, 1.0);
        let net_in =
            (p.net_scale * (0.2 + cpu) * (1.0 + n(&mut self.rng, &self.noise, 0.05))).max(0.0);
        let net_out = net_in * 0.35;
        let disk_r = (p.net_scale * 0.05 * (0.1 + cpu)).max(0.0);
        let disk_w = disk_r * 1.7;
        let cores = p.cores_per_replica * f64::from(p.replicas);
        let mem_gib = p.mem_gib_per_replica * f64::from(p.replicas);
        let mut t = Telemetry {
            entity_id: p.id.clone(),
            ts_ms,
            service: p.service.clone(),
            cluster: p.cluster.clone(),
            cpu_util: Some(cpu),
            mem_util: Some(mem),
            net_in_bps: Some(net_in),
            net_out_bps: Some(net_out),
            disk_read_bps: Some(disk_r),
            disk_write_bps: Some(disk_w),
            cpu_cores: Some(cores),
            mem_bytes: Some(mem_gib * 1_073_741_824.0),
            replicas: Some(p.replicas),
            cost_per_hour: Some(cores * PRICE_VCPU_HOUR + mem_gib * PRICE_GIB_HOUR),
            scale_event: Some(scale_event),
            labels: Vec::new(),
        };
        if self.rng.random::<f64>() < self.cfg.missing_rate {
            match self.rng.random_range(0..4) {
                0 => t.cpu_util = None,
                1 => t.mem_util = None,
                2 => t.net_in_bps = None,
                _ => t.disk_read_bps = None,
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_match_the_seed_document() {
        let mut g = Generator::new(GenConfig::default());
        assert_eq!(g.entity_count(), 100);
        let start = 1_700_000_000_000 / 300_000 * 300_000;
        let (mut n, mut scale, mut missing, mut peak_cpu, mut night_cpu) = (0, 0, 0, 0.0, 0.0);
        for r in 0..(7 * 288) {
            for i in 0..g.entity_count() {
                let t = g.sample(i, start + r * 300_000);
                n += 1;
                scale += usize::from(t.scale_event == Some(true));
                missing += usize::from(
                    t.cpu_util.is_none()
                        || t.mem_util.is_none()
                        || t.net_in_bps.is_none()
                        || t.disk_read_bps.is_none(),
                );
                assert!(t.validate(start + r * 300_000, &Default::default()).is_ok());
                let hour = ((start + r * 300_000) % 86_400_000) / 3_600_000;
                if let Some(c) = t.cpu_util {
                    if hour == 13 {
                        peak_cpu += c
                    } else if hour == 3 {
                        night_cpu += c
                    }
                }
            }
        }
        let scale_rate = scale as f64 / n as f64;
        let missing_rate = missing as f64 / n as f64;
        assert!(
            (0.02..0.045).contains(&scale_rate),
            "scale events {scale_rate}"
        );
        assert!(
            (0.007..0.013).contains(&missing_rate),
            "missing {missing_rate}"
        );
        assert!(
            peak_cpu > 1.3 * night_cpu,
            "business hours peak: {peak_cpu} vs {night_cpu}"
        );
    }
}
