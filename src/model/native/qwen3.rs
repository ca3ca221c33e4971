//! Qwen3 (transformers' `Qwen3ForCausalLM`): per-head RMSNorm of queries and keys
//! (`self_attn.q_norm`, `self_attn.k_norm`, over head_dim) before RoPE; q/k/v/o biases follow
//! `attention_bias` (false by default); MLP without bias; `head_dim` is its own field (default
//! 128, Qwen3-0.6B: hidden 1024 with 16 heads of 128); `num_key_value_heads` defaults to 32; the
//! sliding window applies only with `use_sliding_window: true`.

use super::arch::{Architecture, Bias, SlidingWindow};

pub const QWEN3: Architecture = Architecture {
    model_type: "qwen3",
    qkv_bias: Bias::Flag("attention_bias"),
    o_bias: Bias::Flag("attention_bias"),
    mlp_bias: Bias::Never,
    qk_norm: true,
    default_head_dim: Some(128),
    default_kv_heads: Some(32),
    sliding_window: SlidingWindow::Gated,
};
