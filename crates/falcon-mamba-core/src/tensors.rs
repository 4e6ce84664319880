//! The model's tensor list, the one place it is spelled: every tensor a config requires, by
//! role, with its checkpoint name and PyTorch-layout shape. The checkpoint check, the loader and
//! the random initialiser all walk this.

use crate::config::FalconMambaConfig;

/// The name and shape of one tensor a config requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Full checkpoint name, e.g. `backbone.layers.0.mixer.A_log`.
    pub name: String,
    /// Shape in PyTorch layout (`[out, in]` for a matrix).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn new<const R: usize>(name: impl Into<String>, shape: [usize; R]) -> Self {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One block's tensors (`backbone.layers.{i}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerTensors {
    /// Pre-mixer RMS norm weight. `[hidden]`
    pub norm: TensorSpec,
    /// hidden → x | z. `[2 * channels, hidden]`
    pub in_proj: TensorSpec,
    /// `[2 * channels]`, with `use_bias`.
    pub in_proj_bias: Option<TensorSpec>,
    /// Depthwise conv taps. `[channels, 1, kernel]`
    pub conv1d: TensorSpec,
    /// `[channels]`, with `use_conv_bias`.
    pub conv1d_bias: Option<TensorSpec>,
    /// channels → dt | B | C. `[rank + 2 * state, channels]`
    pub x_proj: TensorSpec,
    /// rank → channels. `[channels, rank]`
    pub dt_proj: TensorSpec,
    /// `[channels]`
    pub dt_proj_bias: TensorSpec,
    /// `[channels, state]`
    pub a_log: TensorSpec,
    /// `[channels]`
    pub d: TensorSpec,
    /// channels → hidden. `[hidden, channels]`
    pub out_proj: TensorSpec,
    /// `[hidden]`, with `use_bias`.
    pub out_proj_bias: Option<TensorSpec>,
}

/// Every tensor of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelTensors {
    /// Token embeddings. `[vocab, hidden]`
    pub embedding: TensorSpec,
    /// The blocks.
    pub layers: Vec<LayerTensors>,
    /// Final RMS norm weight. `[hidden]`
    pub norm_f: TensorSpec,
    /// Output projection `[vocab, hidden]`; `None` when tied to the embeddings.
    pub lm_head: Option<TensorSpec>,
}

impl ModelTensors {
    /// The tensors a model with this config reads.
    pub fn new(config: &FalconMambaConfig) -> Self {
        let (h, d, n, k, r, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.state_size,
            config.conv_kernel,
            config.time_step_rank,
            config.vocab_size,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let m = format!("backbone.layers.{i}.mixer");
                let bias = |name: &str, len: usize| {
                    config
                        .use_bias
                        .then(|| TensorSpec::new(format!("{m}.{name}.bias"), [len]))
                };
                LayerTensors {
                    norm: TensorSpec::new(format!("backbone.layers.{i}.norm.weight"), [h]),
                    in_proj: TensorSpec::new(format!("{m}.in_proj.weight"), [2 * d, h]),
                    in_proj_bias: bias("in_proj", 2 * d),
                    conv1d: TensorSpec::new(format!("{m}.conv1d.weight"), [d, 1, k]),
                    conv1d_bias: config
                        .use_conv_bias
                        .then(|| TensorSpec::new(format!("{m}.conv1d.bias"), [d])),
                    x_proj: TensorSpec::new(format!("{m}.x_proj.weight"), [r + 2 * n, d]),
                    dt_proj: TensorSpec::new(format!("{m}.dt_proj.weight"), [d, r]),
                    dt_proj_bias: TensorSpec::new(format!("{m}.dt_proj.bias"), [d]),
                    a_log: TensorSpec::new(format!("{m}.A_log"), [d, n]),
                    d: TensorSpec::new(format!("{m}.D"), [d]),
                    out_proj: TensorSpec::new(format!("{m}.out_proj.weight"), [h, d]),
                    out_proj_bias: bias("out_proj", h),
                }
            })
            .collect();
        ModelTensors {
            embedding: TensorSpec::new("backbone.embeddings.weight", [v, h]),
            layers,
            norm_f: TensorSpec::new("backbone.norm_f.weight", [h]),
            lm_head: (!config.tie_word_embeddings)
                .then(|| TensorSpec::new("lm_head.weight", [v, h])),
        }
    }

    /// Bytes the weights take in memory with the matrices (embedding, projections, lm_head) in
    /// `format` (see [`crate::WeightFormat::for_inputs`]) and everything else in f32; `None` on
    /// overflow.
    pub fn weight_bytes(&self, format: crate::WeightFormat) -> Option<u64> {
        self.weight_bytes_with(|_| format)
    }

    /// [`ModelTensors::weight_bytes`] with each matrix in the format `format_of` gives it.
    pub fn weight_bytes_with(
        &self,
        mut format_of: impl FnMut(&TensorSpec) -> crate::WeightFormat,
    ) -> Option<u64> {
        let bytes = |t: &TensorSpec, per: usize| -> Option<u64> {
            t.shape
                .iter()
                .try_fold(per as u64, |acc, &d| acc.checked_mul(d as u64))
        };
        let mut matrix = |t: &TensorSpec| format_of(t).matrix_bytes(t.shape[0], t.shape[1]);
        let mut total = matrix(&self.embedding)?;
        if let Some(lm_head) = &self.lm_head {
            total = total.checked_add(matrix(lm_head)?)?;
        }
        total = total.checked_add(bytes(&self.norm_f, 4)?)?;
        for l in &self.layers {
            for m in [&l.in_proj, &l.x_proj, &l.dt_proj, &l.out_proj] {
                total = total.checked_add(matrix(m)?)?;
            }
            let vectors = [
                Some(&l.norm),
                l.in_proj_bias.as_ref(),
                Some(&l.conv1d),
                l.conv1d_bias.as_ref(),
                Some(&l.dt_proj_bias),
                Some(&l.a_log),
                Some(&l.d),
                l.out_proj_bias.as_ref(),
            ];
            for v in vectors.into_iter().flatten() {
                total = total.checked_add(bytes(v, 4)?)?;
            }
        }
        Some(total)
    }

    /// The weight matrices (embedding, in/x/dt/out_proj, lm_head): the tensors a [`crate::WeightFormat`]
    /// applies to.
    pub fn matrices(&self) -> impl Iterator<Item = &TensorSpec> {
        let layers = self
            .layers
            .iter()
            .flat_map(|l| [&l.in_proj, &l.x_proj, &l.dt_proj, &l.out_proj]);
        std::iter::once(&self.embedding)
            .chain(layers)
            .chain(self.lm_head.as_ref())
    }

    /// Every tensor, in checkpoint order (embedding, blocks, norm_f, lm_head).
    pub fn iter(&self) -> impl Iterator<Item = &TensorSpec> {
        let layers = self.layers.iter().flat_map(|l| {
            [
                Some(&l.norm),
                Some(&l.in_proj),
                l.in_proj_bias.as_ref(),
                Some(&l.conv1d),
                l.conv1d_bias.as_ref(),
                Some(&l.x_proj),
                Some(&l.dt_proj),
                Some(&l.dt_proj_bias),
                Some(&l.a_log),
                Some(&l.d),
                Some(&l.out_proj),
                l.out_proj_bias.as_ref(),
            ]
            .into_iter()
            .flatten()
        });
        std::iter::once(&self.embedding)
            .chain(layers)
            .chain([&self.norm_f])
            .chain(self.lm_head.as_ref())
    }
}

/// Every tensor a model with this config reads, with its PyTorch-layout shape.
pub fn expected_tensors(config: &FalconMambaConfig) -> Vec<TensorSpec> {
    ModelTensors::new(config).iter().cloned().collect()
}
