//! The few XGBoost C API calls the `xgb` crate does not wrap: in-place prediction from a dense
//! row-major buffer (what Python's `Booster.inplace_predict` calls), build information and the
//! library version. This is the only module of the workspace with `unsafe` code.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use xgboost_sys as sys;

/// An error reported by XGBoost's library, with its own message.
#[derive(Debug, thiserror::Error)]
#[error("XGBoost: {0}")]
pub struct XgbError(pub String);

fn check(rc: i32) -> Result<(), XgbError> {
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: XGBGetLastError returns a pointer to a thread-local, NUL-terminated message that
    // stays valid until the next API call on this thread; it is copied at once.
    let msg = unsafe { CStr::from_ptr(sys::XGBGetLastError()) };
    Err(XgbError(msg.to_string_lossy().into_owned()))
}

/// A booster loaded for prediction only. XGBoost documents prediction as thread-safe, and the
/// handle is not tied to the thread that created it.
#[derive(Debug)]
pub struct InplaceBooster {
    handle: sys::BoosterHandle,
    config: CString,
}

// SAFETY: the handle is an owned pointer to a C++ Learner; XGBoost allows using it from another
// thread, and concurrent `XGBoosterPredictFromDense` calls are thread-safe (each thread gets its
// own output buffer). Mutation (`set_param`) takes `&mut self`.
unsafe impl Send for InplaceBooster {}
unsafe impl Sync for InplaceBooster {}

impl InplaceBooster {
    /// Loads a model saved by XGBoost (UBJSON or JSON).
    pub fn from_bytes(model: &[u8]) -> Result<InplaceBooster, XgbError> {
        let mut handle: sys::BoosterHandle = ptr::null_mut();
        // SAFETY: creating a booster with no cached matrices; `handle` is written on success.
        check(unsafe { sys::XGBoosterCreate(ptr::null(), 0, &mut handle) })?;
        let b = InplaceBooster {
            handle,
            config: CString::new(
                r#"{"type":0,"training":false,"iteration_begin":0,"iteration_end":0,"strict_shape":true,"missing":NaN,"cache_id":0}"#,
            )
            .expect("no NUL in the config"),
        };
        // SAFETY: `model` outlives the call; XGBoost copies what it needs.
        check(unsafe {
            sys::XGBoosterLoadModelFromBuffer(b.handle, model.as_ptr().cast(), model.len() as u64)
        })?;
        Ok(b)
    }

    /// Sets a booster parameter (`nthread`, `device`, …).
    pub fn set_param(&mut self, name: &str, value: &str) -> Result<(), XgbError> {
        let (n, v) = (
            CString::new(name).map_err(|e| XgbError(e.to_string()))?,
            CString::new(value).map_err(|e| XgbError(e.to_string()))?,
        );
        // SAFETY: both strings are NUL-terminated and outlive the call.
        check(unsafe { sys::XGBoosterSetParam(self.handle, n.as_ptr(), v.as_ptr()) })
    }

    /// Predicts `rows` (row-major, `n_rows` rows, NaN = missing) into `out`; returns the number
    /// of outputs per row (1 for a single quantile, one per quantile for multi-quantile models).
    pub fn predict(&self, rows: &[f32], n_rows: usize, out: &mut Vec<f32>) -> Result<usize, XgbError> {
        out.clear();
        if n_rows == 0 {
            return Ok(0);
        }
        if !rows.len().is_multiple_of(n_rows) {
            return Err(XgbError(format!(
                "{} values do not split into {n_rows} rows",
                rows.len()
            )));
        }
        let n_cols = rows.len() / n_rows;
        // The NumPy array interface XGBoost reads the buffer through (address, shape, dtype).
        let iface = CString::new(format!(
            r#"{{"data":[{},true],"shape":[{n_rows},{n_cols}],"typestr":"<f4","version":3}}"#,
            rows.as_ptr() as usize
        ))
        .expect("no NUL");
        let mut shape: *const u64 = ptr::null();
        let mut dim: u64 = 0;
        let mut result: *const f32 = ptr::null();
        // SAFETY: `rows` stays borrowed (and unmoved) for the whole call, and the interface
        // describes exactly its length; out-pointers are valid locals.
        check(unsafe {
            sys::XGBoosterPredictFromDense(
                self.handle,
                iface.as_ptr() as *const c_char,
                self.config.as_ptr(),
                ptr::null_mut(),
                &mut shape,
                &mut dim,
                &mut result,
            )
        })?;
        // SAFETY: on success XGBoost points `shape` at `dim` dimensions and `result` at their
        // product of floats, in a thread-local buffer valid until this thread's next call.
        let shape = unsafe { std::slice::from_raw_parts(shape, dim as usize) };
        let total: u64 = shape.iter().product();
        let values = unsafe { std::slice::from_raw_parts(result, total as usize) };
        out.extend_from_slice(values);
        Ok(if dim >= 2 { shape[1..].iter().product::<u64>() as usize } else { 1 })
    }
}

impl Drop for InplaceBooster {
    fn drop(&mut self) {
        // SAFETY: the handle was created by XGBoosterCreate and is freed exactly once.
        unsafe {
            sys::XGBoosterFree(self.handle);
        }
    }
}

/// The library's build information (JSON), e.g. whether it was built with CUDA.
pub fn build_info() -> Result<serde_json::Value, XgbError> {
    let mut out: *const c_char = ptr::null();
    // SAFETY: XGBuildInfo points `out` at a static NUL-terminated string.
    check(unsafe { sys::XGBuildInfo(&mut out) })?;
    let s = unsafe { CStr::from_ptr(out) }.to_string_lossy();
    serde_json::from_str(&s).map_err(|e| XgbError(format!("build info: {e}")))
}

/// The library's version, e.g. `3.4.1`.
pub fn version() -> String {
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: writes three ints.
    unsafe { sys::XGBoostVersion(&mut a, &mut b, &mut c) };
    format!("{a}.{b}.{c}")
}
