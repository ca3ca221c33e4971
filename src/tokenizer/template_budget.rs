//! The budget of one chat-template rendering. Templates come from strangers' tokenizer files
//! (or a caller's options), so a render may not run forever, allocate without bound or recurse
//! without bound. minijinja's fuel bounds the instructions a render runs and the data it
//! creates (its builtins charge for the size of what they make before making it); what it does
//! not charge by itself is charged here: the padding `str.format` widths ask for (minijinja-
//! contrib formats without a budget) and adpo's own `tojson`, which also bounds its nesting.
//! minijinja prints a nested value recursively, so a value printed with `{{ }}` is checked for
//! its depth first (a list nested 30,000 deep through a namespace overflows the stack).
//!
//! The rest is bounded inside minijinja, which adpo builds patched (vendor/minijinja,
//! ADPO-PATCH.md): a list `+` (lazy until it copies) needs fuel for every item it may copy, and
//! every walk over a value (`~`, `|string`, `==`, `<`, sorting, hashing, serializing) stops
//! 500 levels deep or when it has visited the fuel left, which fails the render.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind, Output, State};

/// Fuel of one render: one unit per instruction, or per 64 bytes of data created. A
/// 1,000-message conversation (700 KB of text) takes about 80,000; this allows 12 times that,
/// well under a second of work and 64 MiB of data.
pub(crate) const FUEL: u64 = 1_000_000;

/// The stack of the thread a render runs on (pages are only committed when touched; a host
/// thread's own stack may be 1 MB). The fuel lets a template nest a list ~400,000 levels deep;
/// freeing that takes under 64 MB (measured). Stringifying or comparing it stops 500 levels
/// deep (the patched minijinja, ~1 KB a level).
const RENDER_STACK: usize = 128 << 20;

/// Bytes of data per unit of fuel, as minijinja charges them.
const BYTES_PER_FUEL: u64 = 64;

/// The deepest nesting `tojson` writes (Python's json.dumps stops near 1,000; tool schemas
/// nest a few levels).
pub(crate) const TOJSON_DEPTH: usize = 256;

/// The deepest nesting `{{ }}` prints (minijinja's printing takes up to ~1 KB of stack per
/// level; 256 levels fit any host thread's stack).
pub(crate) const PRINT_DEPTH: usize = 256;

/// Runs a rendering on a thread of its own with a stack of `RENDER_STACK`.
pub(crate) fn on_render_stack<T: Send>(
    f: impl FnOnce() -> crate::error::Result<T> + Send,
) -> crate::error::Result<T> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("adpo-template".into())
            .stack_size(RENDER_STACK)
            .spawn_scoped(scope, f)
            .map_err(|e| {
                crate::error::Error::invalid(format!("cannot start the rendering's thread: {e}"))
            })?;
        thread
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
    })
}

/// Charges the fuel for `bytes` of data about to be created; an error when it is not there.
pub(crate) fn charge_bytes(state: &State, bytes: u64) -> Result<(), Error> {
    state.consume_fuel(bytes / BYTES_PER_FUEL)
}

/// The bytes of data the rest of this render's fuel pays for.
pub(crate) fn bytes_left(state: &State) -> u64 {
    state
        .fuel_levels()
        .map_or(u64::MAX, |(_, left)| left.saturating_mul(BYTES_PER_FUEL))
}

/// minijinja-contrib's Python methods, with `str.format` charged for its widths first.
pub(crate) fn unknown_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if method == "format" && value.kind() == ValueKind::String {
        charge_bytes(state, requested_padding(value.as_str().unwrap_or_default()))?;
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// minijinja's formatter for `{{ }}`, after checking the value's depth.
pub(crate) fn formatter(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    check_print_depth(state, value)?;
    minijinja::escape_formatter(out, state, value)
}

/// Walks `value` without recursion; each item printed takes a byte at least, so the walk stops
/// where the budget would.
fn check_print_depth(state: &State, value: &Value) -> Result<(), Error> {
    if !is_container(value) {
        return Ok(());
    }
    let mut visits = bytes_left(state);
    let mut stack = vec![(value.clone(), 0usize)];
    while let Some((v, depth)) = stack.pop() {
        visits = visits
            .checked_sub(1)
            .ok_or_else(|| Error::from(ErrorKind::OutOfFuel))?;
        if !is_container(&v) {
            continue;
        }
        if depth >= PRINT_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot print a value nested deeper than {PRINT_DEPTH} levels"),
            ));
        }
        let map = v.kind() == ValueKind::Map;
        for item in v.try_iter()? {
            if map {
                stack.push((v.get_item(&item)?, depth + 1));
            }
            stack.push((item, depth + 1));
        }
    }
    Ok(())
}

/// Lists and maps (one-shot iterators print without being walked).
fn is_container(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Map)
}

/// An upper bound on the padding a format string's widths and precisions ask for: the sum of
/// the numbers written in it (widths are literal digits in `str.format` specs).
fn requested_padding(format: &str) -> u64 {
    format
        .split(|c: char| !c.is_ascii_digit())
        .filter(|digits| !digits.is_empty())
        .map(|digits| digits.parse::<u64>().unwrap_or(u64::MAX))
        .fold(0u64, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_the_sum_of_the_numbers() {
        assert_eq!(requested_padding("{:>10}{:.5f} x"), 15);
        assert_eq!(requested_padding("no numbers"), 0);
        assert_eq!(requested_padding("{:>99999999999999999999999}"), u64::MAX);
    }
}
