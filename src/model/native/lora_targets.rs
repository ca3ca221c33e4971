//! Which modules LoRA goes on: PEFT's rule for a list of `target_modules` (peft's
//! `check_target_module_exists`): a module matches when its name equals an entry or ends with
//! "." + entry, over the module names transformers' `named_modules()` gives the causal LM
//! (`model.layers.0.self_attn.q_proj`, ...). adpo adapts the seven linear projections of each
//! layer; an entry that matches nothing, or matches a module that is not one of those (the
//! embedding, lm_head, a norm, a whole layer), is refused with its name, where PEFT would
//! silently skip it or wrap a module adpo cannot.

use super::config::Config;
use super::layout::{
    attention_module, layer_module, mlp_module, projection_modules, ATTENTION_PROJECTIONS,
    MLP_PROJECTIONS,
};
use crate::error::{Error, Result};

/// Every module name of the causal LM with whether LoRA can go on it, in module order.
fn modules(c: &Config) -> Vec<(String, bool)> {
    let mut out = vec![
        ("model".to_string(), false),
        ("model.embed_tokens".to_string(), false),
        ("model.layers".to_string(), false),
    ];
    for i in 0..c.num_layers {
        let (layer, attn, mlp) = (layer_module(i), attention_module(i), mlp_module(i));
        let [q, k, v, o, gate, up, down] = projection_modules(i);
        out.push((layer.clone(), false));
        out.push((attn.clone(), false));
        out.extend([q, k, v, o].map(|p| (p, true)));
        if c.arch.qk_norm {
            out.push((format!("{attn}.q_norm"), false));
            out.push((format!("{attn}.k_norm"), false));
        }
        out.push((mlp.clone(), false));
        out.extend([gate, up, down].map(|p| (p, true)));
        out.push((format!("{mlp}.act_fn"), false));
        out.push((format!("{layer}.input_layernorm"), false));
        out.push((format!("{layer}.post_attention_layernorm"), false));
    }
    for tail in ["model.norm", "model.rotary_emb", "lm_head"] {
        out.push((tail.to_string(), false));
    }
    out
}

/// PEFT's match of one entry against a module name.
fn matches(name: &str, entry: &str) -> bool {
    name == entry
        || name
            .strip_suffix(entry)
            .is_some_and(|head| head.ends_with('.'))
}

/// The projection modules the entries select, in module order (`what` names the source of the
/// entries in messages).
pub fn select(c: &Config, entries: &[String], what: &str) -> Result<Vec<String>> {
    let all = modules(c);
    for entry in entries {
        let hits: Vec<&(String, bool)> = all.iter().filter(|(n, _)| matches(n, entry)).collect();
        if hits.is_empty() {
            return Err(Error::config(format!(
                "{what}: target_modules entry \"{entry}\" matches no module of this model \
                 (a name matches when it equals the entry or ends with \".\" + entry, as in \
                 PEFT; e.g. \"q_proj\", \"mlp.down_proj\", \"model.layers.0.self_attn.v_proj\")"
            )));
        }
        if let Some((name, _)) = hits.iter().find(|(_, adaptable)| !adaptable) {
            return Err(Error::unsupported(format!(
                "{what}: target_modules entry \"{entry}\" matches {name}, which adpo does not \
                 adapt (LoRA goes on the {} and {} projections)",
                ATTENTION_PROJECTIONS.join("/"),
                MLP_PROJECTIONS.join("/")
            )));
        }
    }
    Ok(all
        .into_iter()
        .filter(|(n, adaptable)| *adaptable && entries.iter().any(|e| matches(n, e)))
        .map(|(n, _)| n)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_as_in_peft() {
        assert!(matches("model.layers.0.self_attn.q_proj", "q_proj"));
        assert!(matches(
            "model.layers.0.self_attn.q_proj",
            "self_attn.q_proj"
        ));
        assert!(matches(
            "model.layers.0.self_attn.q_proj",
            "0.self_attn.q_proj"
        ));
        assert!(!matches(
            "model.layers.10.self_attn.q_proj",
            "0.self_attn.q_proj"
        ));
        assert!(!matches("model.layers.0.self_attn.q_proj", "proj"));
        assert!(!matches("model.layers.0.self_attn.q_proj", "_proj"));
        assert!(matches("lm_head", "lm_head"));
    }
}
