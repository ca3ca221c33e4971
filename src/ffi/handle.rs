//! One declaration for every opaque handle: `handle!(adpo_x, Inner)` after
//! `pub struct adpo_x(Guarded<Inner>);` gives it the poison flag that a panic sets, creation
//! and freeing. (The struct itself is spelt out so cbindgen sees it and declares it opaque.)

use super::boundary::infallible;
use std::ops::Deref;
use std::sync::atomic::AtomicBool;

/// A handle's Rust value and the flag a panic inside a call on it sets.
pub struct Guarded<T> {
    pub(crate) inner: T,
    pub(crate) poisoned: AtomicBool,
}

impl<T> Guarded<T> {
    pub fn new(inner: T) -> Self {
        Guarded {
            inner,
            poisoned: AtomicBool::new(false),
        }
    }
}

/// An opaque C handle (see `boundary::call_on`).
pub trait Handle: Deref<Target = Guarded<Self::Inner>> + Sized {
    type Inner;
    fn wrap(g: Guarded<Self::Inner>) -> Self;

    /// A new handle for C, owned by the caller until its `_free`.
    fn into_raw(inner: Self::Inner) -> *mut Self {
        Box::into_raw(Box::new(Self::wrap(Guarded::new(inner))))
    }

    fn poison_flag(&self) -> &AtomicBool {
        &self.poisoned
    }
}

/// Frees a handle made by [`Handle::into_raw`]. NULL is a no-op; never panics into C.
pub fn free<H: Handle>(handle: *mut H) {
    infallible((), || {
        if !handle.is_null() {
            // SAFETY: handle came from into_raw and is freed once (caller contract).
            drop(unsafe { Box::from_raw(handle) });
        }
    })
}

/// Implements [`Handle`] for `pub struct $name(Guarded<$inner>);`.
macro_rules! handle {
    ($name:ident, $inner:ty) => {
        impl std::ops::Deref for $name {
            type Target = $crate::ffi::handle::Guarded<$inner>;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }
        impl $crate::ffi::handle::Handle for $name {
            type Inner = $inner;
            fn wrap(g: $crate::ffi::handle::Guarded<$inner>) -> Self {
                $name(g)
            }
        }
    };
}
pub(crate) use handle;
