//! include/adpo.h must be exactly what the pinned cbindgen generates from the sources, with
//! the section openings below inserted before each section's first function (cbindgen has no
//! notion of sections). `make header` (ADPO_WRITE_HEADER=1) rewrites it instead of comparing.

/// (first function of the section, title, opening paragraph), in header order.
const SECTIONS: &[(&str, &str, &str)] = &[
    ("adpo_error_message", "Errors", "A failed call returns its status and, when `err` is not NULL, an adpo_error that\n * carries the status and a message naming the argument at fault. Free it with adpo_error_free."),
    ("adpo_version", "Version and utilities", "Run-time versions (check adpo_abi_version() against ADPO_ABI_VERSION), the CUDA device\n * count, and the free function for strings adpo hands out."),
    ("adpo_objective_new", "The objective, on host buffers", "The model-free ADPO objective: per-candidate log-probs of your policy and anchor, rewards\n * or targets, and group ids in; the loss and d loss / d logp out, for your own backward pass."),
    ("adpo_objective_eval_dlpack", "The objective, on DLPack tensors", "The same objective on tensors of any producer (PyTorch, JAX, CuPy), on CPU or CUDA,\n * without copies: ownership of every input passes to adpo at the call."),
    ("adpo_model_load", "Models", "Causal LMs as opaque handles: the trainable policy, or a frozen reference. Loading a\n * TorchScript file runs its code: load only files you trust."),
    ("adpo_tokenizer_load", "Tokenizers and chat templates", "Text in, text out: a checkpoint's tokenizer.json (Hugging Face `tokenizers`) and the chat\n * template of its tokenizer_config.json (rendered as transformers renders it)."),
    ("adpo_batch_new", "Batches", "Token ids, masks, group ids and rewards (or targets) of n candidates x t positions, checked\n * once; a sampled batch also carries the sampling-time log-probs."),
    ("adpo_trainer_new", "Trainer", "ADPO steps on a policy: log-probs, anchored scores, the objective, backward, optimizer and\n * the anchor's update, micro-batched and exact."),
    ("adpo_trainer_sample", "Sampling", "K candidates per prompt from the trainer's policy, returned as a batch ready to score."),
    ("adpo_trainer_save", "Checkpoints", "The policy's weights and the trainer's state (optimizer, steps, anchor), written\n * atomically and checked when read back."),
    ("adpo_trainer_use_mpi", "Data-parallel training", "Many processes, each with its own groups, over MPI or the host's own all-reduce: the\n * update equals that of one process holding every group."),
];

/// Inserts each section's opening comment before the doc comment of its first function.
fn with_sections(generated: &str) -> String {
    let mut out = generated.to_string();
    // Declarations follow the `extern "C" {` line; the opening comment mentions names too.
    let start = out.find("extern \"C\" {").expect("cbindgen's extern block");
    for (first, title, paragraph) in SECTIONS {
        let decl = start
            + out[start..]
                .find(&format!("{first}("))
                .unwrap_or_else(|| panic!("section {title}: {first} is not in the header"));
        let doc = out[..decl]
            .rfind("/**")
            .expect("every function has a doc comment");
        let rule = "=".repeat(88 - title.len().min(80) - 4);
        let banner = format!("/* {title} {rule}\n *\n * {paragraph}\n */\n\n");
        out.insert_str(doc, &banner);
    }
    out
}

use std::path::Path;

#[test]
fn header_matches_cbindgen_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen failed to parse the crate")
        .write(&mut generated);
    let generated = with_sections(&String::from_utf8(generated).unwrap());
    let path = root.join("include/adpo.h");
    if std::env::var_os("ADPO_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/adpo.h differs from what cbindgen generates: run `make header` and commit it"
    );
}
