// adpo: this whole module is adpo's (vendor/minijinja/ADPO-PATCH.md).
//! Bounds on the recursive walks over values: printing (`Display`, `Debug`),
//! comparing (`PartialEq`, `Ord`), hashing and serializing.
//!
//! These walks recurse once per level of nesting and visit every item,
//! shared ones as often as they are referenced.  A template can build a
//! value nested hundreds of thousands of levels deep, or a value that
//! references the same list twice at each of forty levels, within its fuel;
//! walking either overflows the stack or never ends.  None of these traits
//! can return an engine error, so a walk that goes deeper than
//! [`MAX_DEPTH`] levels, or visits more than the fuel left, stops with a
//! bounded result (`...` printed, unequal, equal ordering, nothing more
//! hashed) and records why; the VM turns the record into an error after the
//! instruction that walked (see [`take_error`]).  Outside a render the
//! bounded result stands.
use std::cell::Cell;

use crate::error::{Error, ErrorKind};

/// The deepest nesting a walk descends into (the default recursion limit of
/// templates).  About 1 KB of stack a level in the deepest walk.
pub(crate) const MAX_DEPTH: usize = 500;

/// The cost of visiting a container or one of its items, in fuel units (as
/// the fuel's `ITEM_COST`).
const ITEM_COST: u64 = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Exceeded {
    No,
    Depth,
    Work,
}

struct Walk {
    /// The depth of the walk in progress.
    depth: Cell<usize>,
    /// Fuel units walked since the VM last took them.
    work: Cell<u64>,
    /// The fuel units a walk may still use (the fuel left in the render).
    budget: Cell<u64>,
    /// Why a walk stopped early, since the VM last looked.
    exceeded: Cell<Exceeded>,
}

thread_local! {
    static WALK: Walk = const {
        Walk {
            depth: Cell::new(0),
            work: Cell::new(0),
            budget: Cell::new(u64::MAX),
            exceeded: Cell::new(Exceeded::No),
        }
    };
}

/// Leaves a level of a walk when dropped.
pub(crate) struct Level(());

impl Drop for Level {
    fn drop(&mut self) {
        WALK.with(|w| w.depth.set(w.depth.get().saturating_sub(1)));
    }
}

/// Enters a container of `items` items; `None` (and the reason recorded)
/// when the walk is too deep or has used up its budget and must stop here.
#[inline]
pub(crate) fn enter(items: usize) -> Option<Level> {
    WALK.with(|w| {
        let depth = w.depth.get();
        if depth >= MAX_DEPTH {
            w.exceeded.set(Exceeded::Depth);
            return None;
        }
        if !charge_in(w, (items as u64).saturating_add(1).saturating_mul(ITEM_COST)) {
            return None;
        }
        w.depth.set(depth + 1);
        Some(Level(()))
    })
}

/// Charges `units` of walking (such as the bytes of a string printed inside
/// a container); `false` (and the reason recorded) when over the budget.
#[inline]
pub(crate) fn charge(units: u64) -> bool {
    WALK.with(|w| charge_in(w, units))
}

fn charge_in(w: &Walk, units: u64) -> bool {
    let work = w.work.get().saturating_add(units);
    w.work.set(work);
    if work > w.budget.get() {
        w.exceeded.set(Exceeded::Work);
        false
    } else {
        true
    }
}

/// Forgets what earlier walks on this thread recorded (a render starts).
pub(crate) fn reset() {
    WALK.with(|w| {
        w.work.set(0);
        w.budget.set(u64::MAX);
        w.exceeded.set(Exceeded::No);
    });
}

/// The next walks may use `units` fuel units (the fuel left).
#[cfg(feature = "fuel")]
#[inline]
pub(crate) fn set_budget(units: u64) {
    WALK.with(|w| w.budget.set(units));
}

/// Takes the fuel units walked since the last call, and the error when a
/// walk stopped early.
#[inline]
pub(crate) fn take_error() -> (u64, Option<Error>) {
    WALK.with(|w| {
        let work = w.work.replace(0);
        let err = match w.exceeded.replace(Exceeded::No) {
            Exceeded::No => None,
            Exceeded::Depth => Some(Error::new(
                ErrorKind::InvalidOperation,
                format!("value nested deeper than {MAX_DEPTH} levels"),
            )),
            #[cfg(feature = "fuel")]
            Exceeded::Work => Some(Error::from(ErrorKind::OutOfFuel)),
            #[cfg(not(feature = "fuel"))]
            Exceeded::Work => None,
        };
        (work, err)
    })
}

/// `iter`, charged an item's visit per item; it ends early (and the reason
/// is recorded) when over the budget.
#[inline]
pub(crate) fn charged<I: Iterator>(iter: I) -> impl Iterator<Item = I::Item> {
    iter.take_while(|_| charge(ITEM_COST))
}
