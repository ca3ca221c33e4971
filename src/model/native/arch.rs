//! What distinguishes one decoder-only architecture from another, as a value the shared decoder
//! (decoder.rs) and the config reader (config.rs) consume. Each supported `model_type` is one
//! small file (llama.rs, mistral.rs, qwen2.rs, qwen3.rs) holding one [`Architecture`]; adding a
//! fifth is one more such file and one line in [`ARCHITECTURES`].

/// Where a projection's bias comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bias {
    Never,
    Always,
    /// A boolean key of config.json (false when absent), e.g. `attention_bias`.
    Flag(&'static str),
}

/// How the architecture reads `sliding_window` (adpo has no sliding-window attention: a window
/// that can bind is refused at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The architecture has none; the keys are ignored (as transformers does).
    Absent,
    /// `sliding_window` (null = none) applies to every layer (transformers' Mistral).
    EveryLayer,
    /// Only with `use_sliding_window: true`, on the layers `layer_types` marks
    /// "sliding_attention" (when absent: layers `i >= max_window_layers`) (Qwen2, Qwen3).
    Gated,
}

/// One architecture family's specifics.
#[derive(Debug)]
pub struct Architecture {
    /// config.json's `model_type`.
    pub model_type: &'static str,
    /// Bias of the q, k and v projections.
    pub qkv_bias: Bias,
    /// Bias of the output projection.
    pub o_bias: Bias,
    /// Bias of the MLP's gate, up and down projections.
    pub mlp_bias: Bias,
    /// Per-head RMSNorm of queries and keys (`self_attn.q_norm`, `k_norm`) before RoPE.
    pub qk_norm: bool,
    /// `head_dim` when config.json has none; None: hidden_size / num_attention_heads.
    pub default_head_dim: Option<i64>,
    /// `num_key_value_heads` when config.json has none; None: num_attention_heads.
    pub default_kv_heads: Option<i64>,
    pub sliding_window: SlidingWindow,
}

/// Every supported architecture.
pub const ARCHITECTURES: &[&Architecture] = &[
    &super::llama::LLAMA,
    &super::mistral::MISTRAL,
    &super::qwen2::QWEN2,
    &super::qwen3::QWEN3,
];

/// The architecture of a `model_type`.
pub fn lookup(model_type: &str) -> Option<&'static Architecture> {
    ARCHITECTURES
        .iter()
        .copied()
        .find(|a| a.model_type == model_type)
}

/// The supported model_types, comma-separated, for messages.
pub fn supported() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| a.model_type)
        .collect::<Vec<_>>()
        .join(", ")
}
