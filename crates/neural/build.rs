//! The crate's test binaries find XGBoost's library where headroom-forecast linked it (an
//! rpath): the tests write model versions through headroom-forecast.
fn main() {
    if let Ok(dir) = std::env::var("DEP_HEADROOM_XGBOOST_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
