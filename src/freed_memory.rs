//! Keeping the memory a step frees for the next step (trainer key `retain_freed_memory`).
//!
//! A step allocates gigabytes of activations and frees them at its end. With glibc's default
//! malloc, blocks above a threshold (at most 32 MB) are mmapped and unmapped one by one, and the
//! freed top of the heap is returned to the kernel: the next step then faults every page back
//! in, and the kernel zeroes each one. On the real SmolLM2-135M at 16 x 320 tokens that was
//! about 770,000 page faults (3 GB zeroed) per bf16-mixed step (benches/group_step.c prints the
//! faults per step). With mmap off and trimming off the freed blocks are reused, a steady step
//! faults no page at all, and the step is 1.20x faster (benches/precision_step.py --unretained).
//!
//! These are process-wide malloc settings (mallopt), so the host opts out with the key false;
//! the cost is that the process keeps its peak heap between steps. Other C libraries have no
//! mallopt with these meanings: there the key does nothing.

use std::sync::Once;

static RETAIN: Once = Once::new();

/// Makes glibc's malloc keep freed memory for reuse (once per process; later calls do nothing).
pub fn retain() {
    RETAIN.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets malloc's parameters; it is thread-safe in glibc.
        unsafe {
            // 0 mmapped blocks: every block comes from a heap and goes back to it (a non-main
            // arena still maps a block larger than its 64 MB heaps, as glibc must).
            libc::mallopt(libc::M_MMAP_MAX, 0);
            // -1: never return the heap's free top to the kernel (mallopt(3)).
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        }
    });
}
