//! Configuration: every option declared once ([`declare`]: key, type, default, bounds, doc),
//! JSON read strictly ([`read`]: one object, each key once, arrays only where declared) and
//! mapped by serde with unknown keys refused. The objective's options are here
//! ([`objective`]); the trainer's, sampling's and model loading's beside their code.

pub mod declare;
mod objective;
mod read;
#[cfg(test)]
mod table;

pub(crate) use declare::options;
pub use declare::{Bound, Declared, Number, Opt, Range, Shape};
pub use objective::*;
pub(crate) use read::{from_object, parse_object};

/// A declared config from its JSON (empty = all defaults), its ranges checked; `what` names it
/// in errors.
pub(crate) fn parse_json<T: Declared>(what: &str, json: &str) -> crate::error::Result<T> {
    let cfg: T = from_object(what, parse_object(what, json, &[T::OPTIONS])?)?;
    cfg.check_ranges()?;
    Ok(cfg)
}
