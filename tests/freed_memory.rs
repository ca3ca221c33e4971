//! `retain_freed_memory`: a trainer created with it (the default) turns glibc's mmap of large
//! blocks off, so that a step's freed activations are reused by the next step instead of being
//! unmapped and faulted back in; one created with it false leaves malloc as it was. The setting
//! is process-wide, so this is one program (no test harness), in order, on the main thread:
//! the main arena grows by sbrk when it does not mmap, so the check below is exact.

mod common;

use adpo::trainer::Trainer;

/// Bytes that glibc mmaps for a block larger than every free block it holds and than its
/// largest mmap threshold (32 MB): by default all of the block, with mmap off none.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mmapped_bytes_of_a_block_no_free_block_fits() -> usize {
    // SAFETY: plain malloc/free of a block this function owns; mallinfo2 only reads counters.
    unsafe {
        let before = libc::mallinfo2();
        let size = before.fordblks + (64 << 20);
        // black_box: the compiler may drop a malloc/free pair whose block is never used
        let p = std::hint::black_box(libc::malloc(size));
        assert!(!p.is_null(), "malloc of {size} bytes failed");
        let during = libc::mallinfo2().hblkhd;
        libc::free(p);
        during.saturating_sub(before.hblkhd)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    let policy = common::model("tiny/llama");
    let off = Trainer::new(policy.clone(), None, r#"{"retain_freed_memory": false}"#).unwrap();
    assert!(
        mmapped_bytes_of_a_block_no_free_block_fits() >= 64 << 20,
        "with the key false, glibc should mmap a large block as it does by default"
    );
    drop(off);
    let _on = Trainer::new(policy, None, "{}").unwrap();
    assert_eq!(
        mmapped_bytes_of_a_block_no_free_block_fits(),
        0,
        "after a default trainer, a large block should come from the heap, not mmap"
    );
    println!("freed_memory: ok (a default trainer keeps large blocks in the heap; false leaves malloc alone)");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("freed_memory: skipped (glibc only)");
}
