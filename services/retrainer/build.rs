//! The binary finds XGBoost's library where headroom-forecast linked it (an rpath); installed
//! images put the library on the system path instead.
fn main() {
    if let Ok(dir) = std::env::var("DEP_HEADROOM_XGBOOST_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
