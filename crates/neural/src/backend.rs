//! The burn backends: ndarray on the CPU (always built), CUDA behind the `cuda` feature.
//!
//! `device = auto` takes the GPU only when a driver and a device are present *and* this build
//! has the CUDA backend; burn's CUDA backend panics at first use without a driver, so the
//! check happens before any tensor is made. `device = cuda` without either fails with a
//! message that says which is missing.

use std::path::Path;

use headroom_forecast::backtest::Progress;
use headroom_forecast::dataset::Dataset;
use headroom_forecast::device::{self, Device, DeviceChoice};

use crate::model::{Fitted, NeuralOptions};

/// Inference backend on the CPU.
pub type Cpu = burn::backend::NdArray<f32>;
/// Training backend on the CPU.
pub type CpuTrain = burn::backend::Autodiff<Cpu>;

/// Resolves the configured device for the neural models.
pub fn resolve(choice: DeviceChoice) -> anyhow::Result<Device> {
    device::resolve(
        choice,
        device::nvidia_gpu_present(),
        cfg!(feature = "cuda"),
        "this build of headroom has no CUDA backend for the neural models (build with `--features cuda`, or use the CUDA image)",
    )
}

#[cfg(feature = "cuda")]
pub(crate) fn fit_cuda(ds: &Dataset, opts: &NeuralOptions, checkpoints: Option<&Path>, progress: &mut dyn Progress) -> anyhow::Result<Fitted> {
    type B = burn::backend::Autodiff<burn::backend::Cuda<f32, i32>>;
    let device = burn::backend::cuda::CudaDevice::default();
    crate::model::fit_on::<B>(ds, opts, checkpoints, progress, &device, Device::Cuda)
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn fit_cuda(_: &Dataset, _: &NeuralOptions, _: Option<&Path>, _: &mut dyn Progress) -> anyhow::Result<Fitted> {
    // `resolve` never picks CUDA in a build without the backend.
    anyhow::bail!("this build of headroom has no CUDA backend for the neural models")
}
