//! Links XGBoost's own C library (installed by scripts/setup.sh from the PyPI wheel) and makes
//! the binaries of this crate, and of the crates that depend on it, find it at run time.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=XGBOOST_LIB_DIR");
    let dir = match std::env::var_os("XGBOOST_LIB_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("HEADROOM_CACHE")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/headroom")))
                .unwrap_or_default();
            cache.join("xgboost-3.4.1/xgboost/lib")
        }
    };
    if !dir.join("libxgboost.so").exists() {
        panic!(
            "XGBoost's library is not in {}: run scripts/setup.sh (it installs it from the PyPI \
             wheel xgboost-cpu), or set XGBOOST_LIB_DIR to a directory holding libxgboost.so",
            dir.display()
        );
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
    // For this crate's own tests and benches; dependents read `DEP_HEADROOM_XGBOOST_LIB_DIR`.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    println!("cargo:lib_dir={}", dir.display());
}
