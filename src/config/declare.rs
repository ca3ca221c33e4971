//! One declaration per option: key, type, default, bounds, shape and doc, written once in an
//! [`options!`] block. The block makes the config struct (serde, unknown keys refused), its
//! `Default`, its bounds check and the table the README shows; the strict reader takes the
//! shapes from it.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::fmt;

/// An option as declared.
#[derive(Debug)]
pub struct Opt {
    pub key: &'static str,
    /// The default as JSON, as a caller would write it (the README shows it as is).
    pub default: &'static str,
    pub range: Option<Range>,
    pub shape: Shape,
    /// The README's meaning column.
    pub doc: &'static str,
}

/// Where a JSON array may stand. serde would read a struct or a tagged variant from an array
/// of its fields in order (`{"anchor": ["ema", 0.5]}`), never what a caller meant: so an array
/// is refused, at any depth, except as the value of a list option.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// A value, or an object with no arrays inside.
    Plain,
    /// An array of numbers or strings (or a single value).
    List,
    /// An array of arrays of numbers.
    Lists,
    /// An object whose keys named here are lists.
    Object(&'static [&'static str]),
}

/// Bounds of a number option; null, where the type allows it, is always in range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: Bound,
    pub max: Bound,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    None,
    Open(f64),
    Closed(f64),
}

impl Range {
    pub const POSITIVE: Range = Range::new(Bound::Open(0.0), Bound::None);
    pub const NON_NEGATIVE: Range = Range::new(Bound::Closed(0.0), Bound::None);
    pub const AT_LEAST_ONE: Range = Range::new(Bound::Closed(1.0), Bound::None);
    /// [0, 1): smoothing weights and the like.
    pub const UNIT: Range = Range::new(Bound::Closed(0.0), Bound::Open(1.0));

    pub const fn new(min: Bound, max: Bound) -> Range {
        Range { min, max }
    }

    pub fn contains(&self, v: f64) -> bool {
        let above = match self.min {
            Bound::None => true,
            Bound::Open(m) => v > m,
            Bound::Closed(m) => v >= m,
        };
        let below = match self.max {
            Bound::None => true,
            Bound::Open(m) => v < m,
            Bound::Closed(m) => v <= m,
        };
        v.is_finite() && above && below
    }

    /// `key`'s value in range, or an error that names the key, the range and the value.
    pub fn check<T: Number>(&self, key: &str, value: &T) -> Result<()> {
        match value.number() {
            Some(v) if !self.contains(v) => {
                let null = if T::NULLABLE { " (or null)" } else { "" };
                Err(Error::config(format!(
                    "{key} must be {self}{null}, got {}",
                    shown(v)
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Whole numbers as integers; the rest in serde's short form (1e300 is not 301 digits).
fn shown(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v}")
    } else {
        format!("{v:?}")
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max) {
            (Bound::Open(a), Bound::None) => write!(f, "> {a}"),
            (Bound::Closed(a), Bound::None) => write!(f, ">= {a}"),
            (Bound::None, Bound::Open(b)) => write!(f, "< {b}"),
            (Bound::None, Bound::Closed(b)) => write!(f, "<= {b}"),
            (Bound::None, Bound::None) => write!(f, "finite"),
            (min, max) => {
                let (open, a) = match min {
                    Bound::Open(a) => ('(', a),
                    _ => ('[', value(min)),
                };
                let (close, b) = match max {
                    Bound::Open(b) => (')', b),
                    _ => (']', value(max)),
                };
                write!(f, "in {open}{a}, {b}{close}")
            }
        }
    }
}

fn value(b: Bound) -> f64 {
    match b {
        Bound::Open(v) | Bound::Closed(v) => v,
        Bound::None => f64::NAN,
    }
}

/// A number option's value as f64 (None: null).
pub trait Number {
    const NULLABLE: bool = false;
    fn number(&self) -> Option<f64>;
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn number(&self) -> Option<f64> {
                Some(*self as f64)
            }
        }
    )*};
}
numbers!(f64, u32, u64, usize, i64);

impl<T: Number> Number for Option<T> {
    const NULLABLE: bool = true;
    fn number(&self) -> Option<f64> {
        self.as_ref().and_then(Number::number)
    }
}

/// A config made by [`options!`].
pub trait Declared: Default + DeserializeOwned {
    const OPTIONS: &'static [Opt];
    /// Every number option within its declared range.
    fn check_ranges(&self) -> Result<()>;
}

/// The value of a declared default. A default that does not parse as its option's type is a
/// bug in the declaration, caught by every test that builds the config.
pub fn default_of<T: DeserializeOwned>(key: &str, json: &str) -> T {
    serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("declared default of `{key}` ({json}) does not parse: {e}"))
}

/// Declares a config: one entry per option,
/// `/// doc` `key: Type = "default JSON" [, range R] [, shape S];`.
macro_rules! options {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $key:ident: $ty:ty = $default:literal
                    $(, range $range:expr)? $(, shape $shape:expr)?;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        $vis struct $name {
            $( $(#[doc = $doc])* pub $key: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $( $key: $crate::config::declare::default_of(stringify!($key), $default), )*
                }
            }
        }

        impl $crate::config::Declared for $name {
            const OPTIONS: &'static [$crate::config::Opt] = &[$(
                $crate::config::Opt {
                    key: stringify!($key),
                    default: $default,
                    range: $crate::config::declare::either!(None $(, Some($range))?),
                    shape: $crate::config::declare::either!(
                        $crate::config::Shape::Plain $(, $shape)?
                    ),
                    doc: concat!($($doc),*),
                },
            )*];

            fn check_ranges(&self) -> $crate::error::Result<()> {
                $($( $crate::config::Range::check(&$range, stringify!($key), &self.$key)?; )?)*
                Ok(())
            }
        }
    };
}
pub(crate) use options;

/// The declared value when there is one, else the default (the first).
macro_rules! either {
    ($default:expr) => {
        $default
    };
    ($default:expr, $declared:expr) => {
        $declared
    };
}
pub(crate) use either;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_written_and_name_the_key() {
        let half = Range::new(Bound::Open(0.0), Bound::Open(0.5));
        assert_eq!(half.to_string(), "in (0, 0.5)");
        assert_eq!(Range::UNIT.to_string(), "in [0, 1)");
        assert_eq!(Range::AT_LEAST_ONE.to_string(), ">= 1");
        let e = Range::POSITIVE.check("tau", &-1e300).unwrap_err();
        assert_eq!(e.message, "tau must be > 0, got -1e300");
        let e = Range::AT_LEAST_ONE
            .check("rows", &Some(0usize))
            .unwrap_err();
        assert_eq!(e.message, "rows must be >= 1 (or null), got 0");
        Range::AT_LEAST_ONE.check("rows", &None::<usize>).unwrap();
    }
}
