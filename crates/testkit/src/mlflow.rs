//! A real MLflow tracking server for tests: `mlflow server` from the venv scripts/setup.sh
//! installs (`HEADROOM_MLFLOW`, exported by scripts/test.sh), on a loopback port of its own,
//! with a SQLite backend store and proxied artifacts in a temporary directory. Missing, it is
//! not a skip: `start` panics and names scripts/setup.sh. Stopped (with its workers) on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MlflowServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The `mlflow` executable: `HEADROOM_MLFLOW`, else `$HEADROOM_CACHE/mlflow-venv/bin/mlflow`.
pub fn mlflow_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HEADROOM_MLFLOW") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("HEADROOM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/headroom"));
    cache.join("mlflow-venv/bin/mlflow")
}

impl MlflowServer {
    /// Starts the server and waits (up to `timeout`) until `/health` answers.
    pub fn start(timeout: Duration) -> MlflowServer {
        let bin = mlflow_bin();
        assert!(bin.exists(), "{} is missing: run scripts/setup.sh (it installs MLflow from PyPI)", bin.display());
        let dir = std::env::temp_dir().join(format!("headroom-mlflow-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("mlflow dir");
        let port = crate::free_port();
        let log = std::fs::File::create(dir.join("mlflow.log")).expect("log");
        let child = Command::new(&bin)
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .current_dir(&dir)
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // Its own process group: the server forks workers, and drop stops them all.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let mut s = MlflowServer { child, port, dir };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("mlflow server exited ({status}):\n{}", s.log());
            }
            if s.health() {
                return s;
            }
            assert!(Instant::now() < deadline, "mlflow server did not answer /health within {timeout:?}:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn health(&self) -> bool {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        if write!(c, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        text.starts_with("HTTP/1.1 200") && text.contains("OK")
    }

    /// The tracking URL (`mlflow.tracking_url`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the server keeps the proxied artifacts.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.dir.join("artifacts")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mlflow.log")).unwrap_or_default()
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
