//! The binary refuses bad configuration at start-up, naming the key, before touching Kafka.

use std::process::Command;

fn run_with(env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom-featurizer"));
    cmd.args(args).env_remove("HEADROOM_FEATURIZER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the featurizer binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_values_and_unknown_keys_stop_start_up_naming_the_key() {
    let (ok, err) = run_with(&[("HEADROOM_FEATURIZER__FEATURES__LAGS", "0")], &[]);
    assert!(!ok);
    assert!(err.contains("features.lags"), "{err}");

    let (ok, err) = run_with(
        &[("HEADROOM_FEATURIZER__RUNTIME__MAX_BATCH_WAIT", "soonish")],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("runtime.max_batch_wait"), "{err}");

    let dir = std::env::temp_dir().join(format!("hr-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[features]\nlagz = 3\n").expect("write");
    let (ok, err) = run_with(&[], &["--config", file.to_str().expect("utf-8 path")]);
    assert!(!ok);
    assert!(err.contains("lagz"), "{err}");

    let (ok, err) = run_with(&[], &["--config", "/nonexistent/headroom.toml"]);
    assert!(!ok);
    assert!(err.contains("no such file"), "{err}");
}
