//! Panics caught at the C boundary stay off the host's stderr: a library does not write to its
//! host's stderr unless asked. One process-wide panic hook, installed by the first adpo call,
//! says nothing while the panicking thread is inside an adpo call (the boundary turns the panic
//! into ADPO_STATUS_PANIC with the message), and defers to the hook it replaced otherwise, so a
//! host's own Rust panics still print. `ADPO_LOG=1` in the environment prints adpo's too.

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// How many adpo calls this thread is inside (a callback into the host may call adpo again).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `body` as part of an adpo call: a panic in it is not printed (unless ADPO_LOG=1).
pub fn inside_adpo<T>(body: impl FnOnce() -> T) -> T {
    install();
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    let _leave = Leave;
    body()
}

/// Whether the environment asks adpo to print the panics it catches.
fn logging() -> bool {
    std::env::var_os("ADPO_LOG").is_some_and(|v| !v.is_empty() && v != "0")
}

fn install() {
    static ONCE: Once = Once::new();
    // The hook cannot be replaced while this thread unwinds (a host's Drop calling adpo_*_free):
    // then this call goes without it, and a later one installs it.
    if std::thread::panicking() {
        return;
    }
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let inside = DEPTH.try_with(|d| d.get() > 0).unwrap_or(false);
            if !inside || logging() {
                previous(info);
            }
        }));
    });
}
