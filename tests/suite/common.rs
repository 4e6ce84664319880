//! Shared helpers: the backends under test, locating the fixtures, reading reference tensors.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use falcon_mamba::core::{Checkpoint, ModelTensors};
use falcon_mamba::{
    FalconMamba, FalconMambaConfig, LoadOptions, SelectiveScanBackend, WeightFormat,
};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// The backend of the tests that are not about backends (loading, bad input, state files, CLI).
pub type B = burn::backend::NdArray<f32>;

/// burn-wgpu (Vulkan, Metal, DX12 or WebGPU; Mesa's lavapipe on a machine without a GPU).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu<f32, i32, u32>;

/// burn-wgpu's backend without burn's `Fusion` wrapper (which `Wgpu` is with the `fusion` feature):
/// where the CubeCL kernels run directly.
#[cfg(feature = "wgpu")]
pub type CubeWgpu =
    burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// burn-cuda.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// The default device of any backend (wgpu: the best adapter found; CUDA: GPU 0).
pub fn device<B: Backend>() -> B::Device {
    Default::default()
}

/// The backend the parity and kernel tests run on: `$FALCON_MAMBA_BACKEND`, `cpu` (default),
/// `wgpu` or `cuda`. Naming one this test binary was built without is an error, not a skip.
pub fn backend_under_test() -> String {
    let name = std::env::var("FALCON_MAMBA_BACKEND").unwrap_or_else(|_| "cpu".into());
    let compiled = match name.as_str() {
        "cpu" => true,
        "wgpu" => cfg!(feature = "wgpu"),
        "cuda" => cfg!(feature = "cuda"),
        other => panic!("FALCON_MAMBA_BACKEND={other}: expected cpu, wgpu or cuda"),
    };
    assert!(
        compiled,
        "FALCON_MAMBA_BACKEND={name}, but the tests were built without the `{name}` feature"
    );
    name
}

/// The weight format the parity suite loads models in: `$FALCON_MAMBA_DTYPE`, `f32` (default),
/// `bf16` or `f16`.
pub fn dtype_under_test() -> Option<WeightFormat> {
    match std::env::var("FALCON_MAMBA_DTYPE") {
        Ok(name) => {
            WeightFormat::parse_choice(&name).unwrap_or_else(|e| panic!("FALCON_MAMBA_DTYPE: {e}"))
        }
        Err(_) => None,
    }
}

/// Loads the checkpoint in `dir` with its weight matrices in `format` (`None`: as stored).
pub fn load_in<B: SelectiveScanBackend>(
    dir: &Path,
    format: impl Into<Option<WeightFormat>>,
) -> FalconMamba<B> {
    let format = format.into();
    let options = LoadOptions::default().with_dtype(format);
    FalconMamba::<B>::from_pretrained_with(dir, &device::<B>(), options, |_, _| {})
        .unwrap_or_else(|e| panic!("{} in {format:?}: {e}", dir.display()))
}

/// A copy of the checkpoint in `dir` (config.json and one model.safetensors) whose weight
/// matrices went through `format` and back to f32: what a model loaded from `dir` in `format`
/// computes with, for an f32 model to run as its reference.
pub fn rounded_copy(dir: &Path, format: WeightFormat) -> PathBuf {
    rounded_copy_where(dir, format, |_| true)
}

/// [`rounded_copy`] of the matrices `rounded` picks (by name) only.
pub fn rounded_copy_where(
    dir: &Path,
    format: WeightFormat,
    rounded: impl Fn(&str) -> bool,
) -> PathBuf {
    // Tests run in parallel and may round the same fixture: each call gets its own folder.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dir.file_name().unwrap().to_string_lossy();
    let out = scratch_dir(&format!("rounded-{format}-{name}-{call}"));
    std::fs::copy(dir.join("config.json"), out.join("config.json")).unwrap();
    let config = FalconMambaConfig::from_file(dir.join("config.json")).unwrap();
    let checkpoint = Checkpoint::open(dir).unwrap();
    let tensors = ModelTensors::new(&config);
    let matrices: Vec<&str> = tensors.matrices().map(|t| t.name.as_str()).collect();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|spec| {
            let (values, shape) = if matrices.contains(&spec.name.as_str()) {
                // Read as f32 whatever the storage (bitsandbytes dequantized exactly).
                let (d_out, d_in) = (spec.shape[0], spec.shape[1]);
                let m = checkpoint
                    .read_matrix(&spec.name, d_out, d_in, Some(WeightFormat::F32))
                    .unwrap();
                let mut values = m.to_torch_f32();
                if rounded(&spec.name) {
                    format.round_matrix(&mut values, d_in);
                }
                (values, spec.shape.clone())
            } else {
                checkpoint.read_f32(&spec.name).unwrap()
            };
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (spec.name.clone(), shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    out
}

/// How much looser than on the CPU the parity tolerances are on the backend under test. On wgpu
/// ×2: its matmul tiles sum in another order, and Vulkan lets a driver's `exp`/`log` be off by
/// 3 + 2·|x| ulp (lavapipe measures 9 ulp for exp near -20, 6 for log; CPUs and CUDA ~1). Over 16
/// decode steps of the norm-free Mamba-1 fixture that rounding reaches 1.2e-4 in the logits,
/// with our kernels or with burn's tensor ops alike; the Falcon fixtures stay under 4e-5.
pub fn tolerance_factor() -> f32 {
    match backend_under_test().as_str() {
        "wgpu" => 2.0,
        _ => 1.0,
    }
}

/// Whether the tests that always run on wgpu (whatever `FALCON_MAMBA_BACKEND` says) skip: only
/// when `FALCON_MAMBA_SKIP_WGPU=1`, for a machine with no Vulkan driver. Otherwise a missing
/// adapter fails them.
#[cfg(feature = "wgpu")]
pub fn skip_wgpu() -> bool {
    std::env::var("FALCON_MAMBA_SKIP_WGPU").is_ok_and(|v| v == "1")
}

/// Calls the generic test body `$test::<Backend>()` on the backend under test
/// ([`backend_under_test`]).
macro_rules! on_backend_under_test {
    ($test:ident) => {
        match $crate::common::backend_under_test().as_str() {
            #[cfg(feature = "wgpu")]
            "wgpu" => $test::<$crate::common::Wgpu>(),
            #[cfg(feature = "cuda")]
            "cuda" => $test::<$crate::common::Cuda>(),
            _ => $test::<$crate::common::B>(),
        }
    };
}
pub(crate) use on_backend_under_test;

/// The repository's `tests/fixtures`.
pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One folder of `tests/fixtures` (an oracle fixture, or `tokenizer`).
pub fn fixture(name: &str) -> PathBuf {
    fixtures_root().join(name)
}

/// `tests/models/tiny-falcon-vocab`: a whole checkpoint directory with the real Falcon tokenizer.
pub fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models/tiny-falcon-vocab")
}

/// Every fixture folder (config.json + reference.safetensors) in `tests/fixtures`, then under
/// each folder `$FALCON_MAMBA_FIXTURES` lists (separated like `PATH`). Panics when a directory is
/// missing or holds none: a parity suite that silently tests nothing must not pass.
pub fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs = fixtures_in(&fixtures_root());
    if let Some(extra) = std::env::var_os("FALCON_MAMBA_FIXTURES") {
        for root in std::env::split_paths(&extra) {
            dirs.extend(fixtures_in(&root));
        }
    }
    dirs
}

fn fixtures_in(root: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("fixture directory {} unreadable: {e}", root.display()));
    let mut dirs: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.join("config.json").is_file() && p.join("reference.safetensors").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no fixture folders (config.json + reference.safetensors) in {}",
        root.display()
    );
    dirs
}

/// `reference.safetensors` of a fixture.
pub struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    pub fn open(dir: &Path) -> Self {
        let path = dir.join("reference.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Reference { bytes }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid reference.safetensors")
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors().tensor(name).is_ok()
    }

    /// A float32 tensor as values and shape.
    pub fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let view = self
            .tensors()
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name} missing"));
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (values, view.shape().to_vec())
    }

    /// An int64 `[rows, cols]` id tensor as rows of u32.
    pub fn ids(&self, name: &str) -> Vec<Vec<u32>> {
        let view = self
            .tensors()
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name} missing"));
        assert_eq!(view.dtype(), Dtype::I64, "{name}");
        let values: Vec<u32> = view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect();
        let cols = *view.shape().last().unwrap();
        values.chunks(cols).map(<[u32]>::to_vec).collect()
    }

    pub fn tensor<B: Backend, const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let (values, shape) = self.f32(name);
        Tensor::from_data(TensorData::new(values, shape), &device::<B>())
    }
}

pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Largest absolute difference; panics on a shape mismatch.
pub fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    values((a - b).abs().max())[0]
}

/// A scratch directory unique to this process and `name`, emptied first.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("falcon-mamba-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
