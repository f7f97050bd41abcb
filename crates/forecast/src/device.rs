//! Compute device selection: `auto | cpu | cuda`, shared by XGBoost and the neural models.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A usable GPU when there is one, the CPU otherwise.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            _ => Err(format!("device must be auto, cpu or cuda, got `{s}`")),
        }
    }
}

/// The device a model actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// Whether an NVIDIA driver with at least one device is present (the kernel driver's proc
/// entry and a device node): the precondition for any CUDA path.
pub fn nvidia_gpu_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
        && std::path::Path::new("/dev/nvidia0").exists()
}

/// Resolves the choice for XGBoost: CUDA needs both a GPU and a library built with CUDA
/// (`xgboost==…` from PyPI rather than `xgboost-cpu`).
pub fn for_xgboost(choice: DeviceChoice) -> anyhow::Result<Device> {
    let lib_cuda = crate::xgb::ffi::build_info()
        .ok()
        .and_then(|v| v.get("USE_CUDA").and_then(|b| b.as_bool()))
        .unwrap_or(false);
    resolve(choice, nvidia_gpu_present(), lib_cuda, "XGBoost's library was built without CUDA (install the `xgboost` wheel's library instead of `xgboost-cpu` and point XGBOOST_LIB_DIR at it)")
}

/// The rule shared by every backend: `gpu` is whether a GPU is present, `backend_cuda` whether
/// this backend can use it (`why_backend` says why not).
pub fn resolve(
    choice: DeviceChoice,
    gpu: bool,
    backend_cuda: bool,
    why_backend: &str,
) -> anyhow::Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if gpu && backend_cuda => Ok(Device::Cuda),
        DeviceChoice::Auto => Ok(Device::Cpu),
        DeviceChoice::Cuda if !gpu => anyhow::bail!(
            "device = cuda, but this machine has no usable NVIDIA GPU (no /proc/driver/nvidia/version \
             or /dev/nvidia0); use device = auto or cpu"
        ),
        DeviceChoice::Cuda if !backend_cuda => anyhow::bail!("device = cuda: {why_backend}"),
        DeviceChoice::Cuda => Ok(Device::Cuda),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_rules() {
        assert_eq!(resolve(DeviceChoice::Auto, false, true, "").unwrap(), Device::Cpu);
        assert_eq!(resolve(DeviceChoice::Auto, true, false, "").unwrap(), Device::Cpu);
        assert_eq!(resolve(DeviceChoice::Auto, true, true, "").unwrap(), Device::Cuda);
        assert_eq!(resolve(DeviceChoice::Cpu, true, true, "").unwrap(), Device::Cpu);
        let e = resolve(DeviceChoice::Cuda, false, true, "").unwrap_err();
        assert!(e.to_string().contains("no usable NVIDIA GPU"), "{e}");
        let e = resolve(DeviceChoice::Cuda, true, false, "lib without CUDA").unwrap_err();
        assert!(e.to_string().contains("lib without CUDA"), "{e}");
        assert!("gpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn this_machine_resolves_auto_to_the_cpu_and_refuses_cuda() {
        // No GPU is lent to these machines: the CPU wheel's library and no driver.
        if nvidia_gpu_present() {
            return;
        }
        assert_eq!(for_xgboost(DeviceChoice::Auto).unwrap(), Device::Cpu);
        assert!(for_xgboost(DeviceChoice::Cuda).is_err());
    }
}
