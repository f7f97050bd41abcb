//! The recommender against the real broker: one decision per forecast, identical to what the
//! policy code decides in-process on the same stream, also across a restart in the middle of
//! the stream (state rebuilt by replay); bad input is dead-lettered or held with its reason.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use headroom_policy::{EntityState, ForecastView, Recommender};
use headroom_recommender::{horizons, observation, to_record, Config};
use headroom_runtime::Shutdown;
use headroom_schemas::{Forecast, ForecastPoint, Metric, Observed, Recommendation};
use headroom_testkit::rdkafka::Message;
use headroom_testkit::{StopOnDrop, brokers, consume, create_topics, header, produce_unbatched, unique, Rec};

const STEP: i64 = 300_000;

fn config(brokers: &str, prefix: &str, group: &str) -> Config {
    let mut c: Config = headroom_runtime::load_config(
        headroom_recommender::config_defaults(),
        None,
        "HEADROOM_RECOMMENDER_ITEST_UNUSED__",
    )
    .unwrap();
    c.kafka.brokers = brokers.to_owned();
    c.kafka.group_id = group.to_owned();
    c.http.listen = "127.0.0.1:0".into();
    c.runtime.commit_interval = Duration::from_millis(200);
    c.topics.input = format!("{prefix}forecasts");
    c.topics.output = format!("{prefix}recommendations");
    c.topics.dlq = format!("{prefix}telemetry.dlq");
    c
}

/// Utilization of entity `e` at step `i`: a ramp to a peak, then a long quiet period.
fn util(e: usize, i: i64) -> f64 {
    let phase = (i + e as i64 * 3) % 48;
    if phase < 12 {
        0.3 + 0.055 * phase as f64
    } else if phase < 18 {
        0.95
    } else {
        0.08 + 0.01 * (e as f64)
    }
}

fn forecast(e: usize, i: i64, t0: i64) -> Forecast {
    let entity = format!("svc-{e}");
    let horizontal = e.is_multiple_of(2);
    let points = [(5, 1), (15, 3), (30, 6)]
        .iter()
        .flat_map(|&(m, k)| {
            let u = util(e, i + k);
            [
                ForecastPoint {
                    metric: Metric::Cpu,
                    horizon_min: m,
                    p50: u,
                    p90: u + 0.05,
                    model: "xgboost/v1".into(),
                },
                ForecastPoint {
                    metric: Metric::Memory,
                    horizon_min: m,
                    p50: 0.5,
                    p90: 0.55,
                    model: "xgboost/v1".into(),
                },
            ]
        })
        .collect();
    Forecast {
        event_id: format!("{entity}-{i}"),
        entity_id: entity,
        ts_ms: t0 + i * STEP,
        service: Some(format!("svc{}", e % 3)),
        cluster: Some("eu-1".into()),
        points,
        scale_event_prob: Some(0.02),
        model_versions: vec![("xgboost".into(), "v1".into())],
        observed: Observed {
            cpu_util: Some(util(e, i)),
            mem_util: Some(0.5),
            net_bps: Some(1e6),
            cpu_cores: Some(8.0),
            mem_bytes: Some(16.0 * 1024.0 * 1024.0 * 1024.0),
            replicas: horizontal.then_some(4),
            cost_per_hour: Some(0.4),
        },
    }
}

fn rec(f: &Forecast) -> Rec {
    let mut payload = Vec::new();
    f.encode_framed(&mut payload);
    Rec {
        key: Some(f.entity_id.clone().into_bytes()),
        payload,
        headers: vec![],
    }
}

fn counter(h: &headroom_runtime::service::ServiceHandle, family: &str, label: &str) -> f64 {
    let prefix = format!("headroom_{family}{{");
    let label = format!("=\"{label}\"");
    h.metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decides_every_forecast_as_the_policy_does_across_a_restart() {
    headroom_testkit::init_test_logging();
    let brokers = brokers();
    let prefix = format!("{}.", unique("rec"));
    create_topics(&brokers, &prefix).await;
    let group = unique("recommender");
    let cfg = config(&brokers, &prefix, &group);
    let t0 = 1_700_000_000_000 / STEP * STEP;

    // 6 entities x 96 steps (8 h): ramps, peaks and quiet periods, in two halves.
    let entities = 6;
    let steps = 96;
    let stream: Vec<Forecast> = (0..steps)
        .flat_map(|i| (0..entities).map(move |e| forecast(e, i, t0)))
        .collect();
    let half = stream.len() / 2;

    // Bad input in the second half: undecodable bytes, a key that is not the entity, and
    // forecasts the policy must hold on (NaN quantile, p90 under p50, no capacity).
    let mut nan = forecast(1, steps, t0);
    nan.points[0].p50 = f64::NAN;
    let mut crossed = forecast(3, steps, t0);
    crossed.points[2].p90 = crossed.points[2].p50 - 0.2;
    let mut blind = forecast(5, steps, t0);
    blind.observed.cpu_cores = None;
    let bad_holds = [nan, crossed, blind];
    let mut wrong_key = rec(&forecast(0, steps, t0));
    wrong_key.key = Some(b"someone-else".to_vec());

    // What the policy decides on each entity's stream, uninterrupted.
    let mut engine = Recommender::new(cfg.policy.clone(), cfg.pricing.clone()).unwrap();
    let mut states: HashMap<String, EntityState> = HashMap::new();
    let mut expected: HashMap<String, Recommendation> = HashMap::new();
    let (mut cpu, mut mem) = (Vec::new(), Vec::new());
    for f in stream.iter().chain(bad_holds.iter()) {
        horizons(f, &mut cpu, &mut mem);
        let st = states.entry(f.entity_id.clone()).or_default();
        let d = engine.decide(
            st,
            &observation(f),
            &ForecastView {
                cpu: &cpu,
                mem: &mem,
            },
            0,
        );
        let r = to_record(f, &d, engine.version());
        expected.insert(r.recommendation_id.clone(), r);
    }
    let actions: HashSet<&str> = expected
        .values()
        .map(Recommendation::action_symbol)
        .collect();
    for a in ["HOLD", "SCALE_OUT", "SCALE_IN", "SET_REQUESTS"] {
        assert!(actions.contains(a), "the stream exercises {a}: {actions:?}");
    }

    // First half, then a stop (offsets and replay floors committed), then the second half
    // to a new instance of the same group: its state must come back by replay.
    let input = format!("{prefix}forecasts");
    let out_topic = format!("{prefix}recommendations");
    let recs: Vec<Rec> = stream.iter().map(rec).collect();
    produce_unbatched(&brokers, &input, &recs[..half]);
    let h1 = headroom_recommender::start(cfg.clone(), Shutdown::new())
        .await
        .unwrap();
    let _g1 = StopOnDrop(h1.shutdown.clone());
    let got = consume(
        &brokers,
        &out_topic,
        half,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    assert!(
        got.len() >= half,
        "first half: {} of {half} decisions",
        got.len()
    );
    h1.stop().await.unwrap();

    let mut rest: Vec<Rec> = recs[half..].to_vec();
    rest.push(Rec {
        key: Some(b"svc-2".to_vec()),
        payload: vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3],
        headers: vec![],
    });
    rest.push(wrong_key);
    rest.extend(bad_holds.iter().map(rec));
    produce_unbatched(&brokers, &input, &rest);
    let h2 = headroom_recommender::start(cfg.clone(), Shutdown::new())
        .await
        .unwrap();
    let _g2 = StopOnDrop(h2.shutdown.clone());
    let all = consume(
        &brokers,
        &out_topic,
        expected.len(),
        Duration::from_secs(90),
        Duration::from_secs(1),
    );

    // Every decision exactly as the uninterrupted policy made it; replays repeat ids, never
    // contents.
    let mut seen: HashMap<String, Recommendation> = HashMap::new();
    for m in &all {
        let r = Recommendation::decode(m.payload().unwrap()).unwrap();
        assert_eq!(m.key(), Some(r.entity_id.as_bytes()), "keyed by entity");
        if let Some(prev) = seen.get(&r.recommendation_id) {
            assert_eq!(prev, &r, "a replayed decision differs");
        }
        seen.insert(r.recommendation_id.clone(), r);
    }
    let missing: Vec<&String> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} decisions missing, e.g. {:?}",
        missing.len(),
        missing.first().map(|k| &expected[*k])
    );
    assert_eq!(
        seen.len(),
        expected.len(),
        "no decision beyond the expected ones"
    );
    for (id, want) in &expected {
        assert_eq!(
            &seen[id], want,
            "decision {id} differs from the in-process policy"
        );
    }
    // The holds on bad input say why.
    let reasons: Vec<&str> = bad_holds
        .iter()
        .map(|f| {
            seen.values()
                .find(|r| {
                    r.forecast_event_id.as_deref() == Some(f.event_id.as_str())
                        && r.entity_id == f.entity_id
                })
                .unwrap()
                .reason
                .as_str()
        })
        .collect();
    assert!(
        reasons[0].contains("invalid forecast") && reasons[1].contains("invalid forecast"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("cpu_cores"), "{reasons:?}");
    assert_eq!(
        counter(&h2, "recommender_holds_total", "invalid_forecast"),
        2.0
    );
    assert_eq!(
        counter(&h2, "recommender_holds_total", "unknown_capacity"),
        1.0
    );

    // Undecodable bytes and the wrong key went to the DLQ with their reasons.
    let dlq = consume(
        &brokers,
        &format!("{prefix}telemetry.dlq"),
        2,
        Duration::from_secs(20),
        Duration::from_millis(500),
    );
    let mut dl: Vec<&str> = dlq.iter().filter_map(|m| header(m, "dlq.reason")).collect();
    dl.sort();
    assert_eq!(dl, vec!["bad_magic", "key_mismatch"], "{dl:?}");
    headroom_testkit::ops::check_exposition("recommender", &h2.metrics.render());
    h2.stop().await.unwrap();
}
