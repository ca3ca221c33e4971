//! Panics caught at the C boundary stay off the host's stderr: a library does not write to its
//! host's stderr unless asked. One process-wide panic hook, installed by the first adpo call,
//! says nothing while the panicking thread is inside an adpo call (the boundary turns the panic
//! into ADPO_STATUS_PANIC with the message), and defers to the hook it replaced otherwise, so a
//! host's own Rust panics still print. `ADPO_LOG=1` in the environment prints adpo's too.
//! A panic on one of rayon's worker threads (the objective's CPU kernel) is part of the adpo
//! call that is waiting for it: while any adpo call runs, rayon workers' panics are quiet too
//! (rayon hands them to the waiting call, whose boundary reports them).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// adpo calls in progress on every thread.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

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
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }
    ACTIVE.fetch_add(1, Ordering::SeqCst);
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
    ONCE.call_once(|| std::panic::set_hook(quiet_over(std::panic::take_hook())));
}

type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// The hook: silent for adpo's panics, `previous` for the others.
fn quiet_over(previous: Hook) -> Hook {
    Box::new(move |info| {
        let inside = DEPTH.try_with(|d| d.get() > 0).unwrap_or(false)
            || (rayon::current_thread_index().is_some() && ACTIVE.load(Ordering::SeqCst) > 0);
        if !inside || logging() {
            previous(info);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Panics with this message that reached the hook adpo's replaced.
    static PRINTED: AtomicUsize = AtomicUsize::new(0);
    const MARK: &str = "quiet_panics test panic";

    #[test]
    fn panics_of_an_adpo_call_and_of_its_rayon_workers_are_quiet_others_are_not() {
        // adpo's hook over one that counts this test's panics (whatever install() did first).
        std::panic::set_hook(quiet_over(Box::new(|info| {
            if info.payload().downcast_ref::<&str>() == Some(&MARK) {
                PRINTED.fetch_add(1, Ordering::SeqCst);
            }
        })));
        let run = |f: &(dyn Fn() + Sync)| {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        };
        // The calling thread, then a rayon worker, inside an adpo call: not printed.
        run(&|| inside_adpo(|| std::panic::panic_any(MARK)));
        run(&|| {
            inside_adpo(|| {
                rayon::scope(|s| s.spawn(|_| std::panic::panic_any(MARK)));
            })
        });
        assert_eq!(PRINTED.load(Ordering::SeqCst), 0);
        // Outside adpo calls: the previous hook prints.
        run(&|| std::panic::panic_any(MARK));
        run(&|| rayon::scope(|s| s.spawn(|_| std::panic::panic_any(MARK))));
        assert_eq!(PRINTED.load(Ordering::SeqCst), 2);
    }
}
