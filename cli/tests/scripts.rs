//! The main job's script refuses bad arguments before it installs or starts anything (on a new
//! machine the set-up takes minutes, and a mistyped trace path used to surface only after it,
//! as a generator that failed while the services kept running with no input).

use std::path::Path;
use std::process::Command;

use headroom_testkit::{repo_root, unique};

fn run_sh(cwd: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/run.sh"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run scripts/run.sh");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_main_job_refuses_bad_arguments_before_setting_anything_up() {
    let cwd = std::env::temp_dir().join(unique("runsh"));
    std::fs::create_dir_all(&cwd).expect("temp dir");
    for (args, expected) in [
        (&["--trace", "no-such-trace.tar.gz"][..], format!("no such file or directory: {}", cwd.join("no-such-trace.tar.gz").display())),
        (&["--duration", "15"][..], "--duration must look like".to_owned()),
        (&["--rate", "fast"][..], "--rate must be a number".to_owned()),
        (&["--max-vms", "all"][..], "--max-vms must be a whole number".to_owned()),
        (&["--entities", "1e5"][..], "--entities must be a whole number".to_owned()),
        (&["--replicas", "2"][..], "unknown argument --replicas".to_owned()),
        (&["--rate", "100", "--duration"][..], "--duration needs a value".to_owned()),
        // 259,200,000,000 records: no machine's memory holds them in the in-memory broker.
        (&["--rate", "100000", "--duration", "30d"][..], "the in-memory broker would need about".to_owned()),
    ] {
        let (ok, stderr) = run_sh(&cwd, args);
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(&expected), "{args:?}: expected `{expected}` in:\n{stderr}");
        // Nothing ran: the set-up and the stack log what they do.
        assert_eq!(stderr.lines().count(), 1, "{args:?}: more than the error:\n{stderr}");
    }
    // A relative trace path is the caller's, not the repository's: the file exists here only.
    std::fs::write(cwd.join("trace.csv"), "ts,vm,cpu\n").expect("trace");
    let (_, stderr) = run_sh(&cwd, &["--trace", "trace.csv", "--rate", "x"]);
    assert!(stderr.contains("--rate must be a number"), "the trace path was refused:\n{stderr}");
    // A replay bounded by --duration is held to the same memory bound as a generated run.
    let (ok, stderr) = run_sh(&cwd, &["--trace", "trace.csv", "--rate", "100000", "--duration", "30d"]);
    assert!(!ok && stderr.contains("the in-memory broker would need about"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "more than the error:\n{stderr}");
    let _ = std::fs::remove_dir_all(&cwd);
}

#[test]
fn the_main_job_prints_its_usage() {
    let (ok, stderr) = run_sh(&repo_root(), &["--help"]);
    assert!(ok);
    assert!(stderr.is_empty(), "{stderr}");
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/run.sh"))
        .arg("--help")
        .output()
        .expect("run.sh --help");
    let usage = String::from_utf8_lossy(&out.stdout);
    for flag in ["--trace", "--duration", "--rate", "--entities", "--max-vms"] {
        assert!(usage.contains(flag), "usage does not name {flag}:\n{usage}");
    }
}
