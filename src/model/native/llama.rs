//! Llama (transformers' `LlamaForCausalLM`): q/k/v/o biases follow `attention_bias`, the MLP's
//! follow `mlp_bias` (both false by default); no q/k norm; head_dim defaults to
//! hidden_size / num_attention_heads; no sliding window. Llama 3.x checkpoints carry
//! `rope_scaling` of type "llama3" (rope.rs).

use super::arch::{Architecture, Bias, SlidingWindow};

pub const LLAMA: Architecture = Architecture {
    model_type: "llama",
    qkv_bias: Bias::Flag("attention_bias"),
    o_bias: Bias::Flag("attention_bias"),
    mlp_bias: Bias::Flag("mlp_bias"),
    qk_norm: false,
    default_head_dim: None,
    default_kv_heads: None,
    sliding_window: SlidingWindow::Absent,
};
