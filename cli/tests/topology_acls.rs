//! `headroom topology acls`: the ACL commands an operator runs on a cluster that enforces ACLs.

use std::process::Command;

fn acls(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["topology", "acls"])
        .args(args)
        .output()
        .expect("run headroom");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn every_service_gets_its_topics_groups_and_shadow_groups() {
    let text = acls(&["--prefix", "prod.", "--principal", "User:hr-{service}"]);
    let line = |service: &str, ops: &str, resource: &str| {
        format!("kafka-acls.sh --bootstrap-server \"$BROKERS\" --add --allow-principal 'User:hr-{service}' {ops} {resource}")
    };
    for want in [
        line("featurizer", "--operation Read", "--topic 'prod.telemetry.raw'"),
        line("featurizer", "--operation Write", "--topic 'prod.features'"),
        line("featurizer", "--operation Read", "--group 'headroom-featurizer'"),
        line("featurizer", "--operation Read", "--group 'headroom-featurizer.replay-floor'"),
        line("featurizer", "--operation Read", "--group 'headroom-featurizer.changelog-start'"),
        line("featurizer", "--operation IdempotentWrite", "--cluster"),
        line("drift-monitor", "--operation Write --operation Read", "--topic 'prod.drift.state'"),
        line("init", "--operation Create --operation DescribeConfigs", "--topic 'prod.models'"),
    ] {
        assert!(text.lines().any(|l| l == want), "missing: {want}\n{text}");
    }
    assert!(text.contains("publishers of prod.telemetry.raw need Write"), "{text}");
    assert!(!text.contains("hr-external"), "{text}");
    // The default principal names each service.
    assert!(acls(&[]).contains("'User:headroom-scorer' --operation Read --topic 'features'"));
}
