//! The deployment files parse with the tools that render them (docker-compose from Debian,
//! installed by scripts/setup.sh), and every image they name is ours or a published one.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn docker_compose_file_is_valid_with_every_profile() {
    let out = Command::new("docker-compose")
        .current_dir(repo())
        .args(["-f", "docker-compose.yml", "--profile", "load", "config"])
        .output()
        .expect("docker-compose is missing: run scripts/setup.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker-compose config failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in [
        "kafka:",
        "postgres:",
        "topology:",
        "featurizer:",
        "models-init:",
        "scorer:",
        "recommender:",
        "drift-monitor:",
        "retrainer:",
        "sink:",
        "loadgen:",
    ] {
        assert!(
            stdout.contains(service),
            "service {service} missing from the rendered stack"
        );
    }
    // Images: our own build, or pinned upstream images.
    for line in stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("image:"))
    {
        let image = line.trim_start().trim_start_matches("image:").trim();
        assert!(
            image == "headroom:latest" || image == "apache/kafka:3.9.0" || image == "postgres:15",
            "unexpected image {image}"
        );
    }
}
