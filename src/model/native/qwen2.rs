//! Qwen2 / Qwen2.5 (transformers' `Qwen2ForCausalLM`): q, k and v projections always have a
//! bias, the output projection never; MLP without bias; no q/k norm; `num_key_value_heads`
//! defaults to 32; the sliding window applies only with `use_sliding_window: true`.

use super::arch::{Architecture, Bias, SlidingWindow};

pub const QWEN2: Architecture = Architecture {
    model_type: "qwen2",
    qkv_bias: Bias::Always,
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    qk_norm: false,
    default_head_dim: None,
    default_kv_heads: Some(32),
    sliding_window: SlidingWindow::Gated,
};
