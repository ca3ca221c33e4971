//! Mistral (transformers' `MistralForCausalLM`): no biases anywhere (transformers builds none,
//! whatever `attention_bias` says); no q/k norm; `head_dim` may differ from
//! hidden_size / num_attention_heads (Mistral Nemo); `num_key_value_heads` defaults to 8;
//! `sliding_window` (default in transformers 4096; null in v0.2+ checkpoints) masks every layer.

use super::arch::{Architecture, Bias, SlidingWindow};

pub const MISTRAL: Architecture = Architecture {
    model_type: "mistral",
    qkv_bias: Bias::Never,
    o_bias: Bias::Never,
    mlp_bias: Bias::Never,
    qk_norm: false,
    default_head_dim: None,
    default_kv_heads: Some(8),
    sliding_window: SlidingWindow::EveryLayer,
};
