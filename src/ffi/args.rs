//! Checking and converting C arguments, shared by every ffi file: strings in and out, host
//! slices, output pointers, and versioned structs (which start with `uint32_t struct_size`).

use crate::error::{Error, Result};
use std::ffi::{c_char, CStr, CString};

/// Reads a NUL-terminated UTF-8 string argument.
pub fn c_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::null(name));
    }
    // SAFETY: non-NULL, NUL-terminated (caller contract).
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))
}

/// Bytes of `len` elements of T, if a buffer can have that many (at most isize::MAX bytes):
/// a larger count describes no real buffer, and `len * size` could wrap to a small number.
pub fn byte_len<T>(len: usize, name: &str) -> Result<usize> {
    let size = std::mem::size_of::<T>();
    len.checked_mul(size)
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{name}: {len} elements of {size} bytes is too large for any buffer"
            ))
        })
}

/// A host slice argument of `len` elements. NULL is an error unless len is 0 (an empty array
/// may have no address, as an empty Go slice), so the real problem gets reported.
pub fn slice<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    byte_len::<T>(len, name)?;
    if ptr.is_null() {
        return Err(Error::null(name));
    }
    // SAFETY: non-NULL and valid for len reads (caller contract).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Hands a Rust string to C as an owned, NUL-terminated string (freed with adpo_string_free).
pub fn owned_c_string(s: String) -> *mut c_char {
    CString::new(s.replace('\0', " "))
        .unwrap_or_default()
        .into_raw()
}

/// Writes `value` through an output pointer that must not be NULL.
pub fn write_out<T>(ptr: *mut T, name: &str, value: T) -> Result<()> {
    if ptr.is_null() {
        return Err(Error::null(name));
    }
    // SAFETY: non-NULL and writable (caller contract).
    unsafe { ptr.write(value) };
    Ok(())
}

/// Checks an output pointer before any work is done, so outputs are written only on success.
pub fn require_out<T>(ptr: *mut T, name: &str) -> Result<()> {
    if ptr.is_null() {
        Err(Error::null(name))
    } else {
        Ok(())
    }
}

/// Checks, before any work, that a caller's versioned struct (starting with `uint32_t
/// struct_size`) announces a usable size.
pub fn check_versioned<T>(out: *mut T) -> Result<()> {
    // SAFETY: out is non-NULL (checked by the caller) and starts with a u32 struct_size.
    let caller_size = unsafe { *(out as *const u32) } as usize;
    if caller_size < std::mem::size_of::<u32>() {
        return Err(Error::invalid(
            "out->struct_size must be set to sizeof(the struct) before the call",
        ));
    }
    Ok(())
}

/// Copies a struct that starts with `uint32_t struct_size` into a caller's possibly older
/// (smaller) version of it, and sets struct_size to the bytes written.
pub fn write_versioned<T: Copy>(out: *mut T, full: &T) -> Result<()> {
    check_versioned(out)?;
    // SAFETY: out is non-NULL and starts with a u32 struct_size (checked above).
    let caller_size = unsafe { *(out as *const u32) } as usize;
    let n = caller_size.min(std::mem::size_of::<T>());
    // SAFETY: both regions are valid for n bytes; the caller promised caller_size bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(full as *const T as *const u8, out as *mut u8, n);
        *(out as *mut u32) = n as u32;
    }
    Ok(())
}

/// Sizes first: reports `ids.len()` through `out_len`, and copies the ids when `cap` holds them.
/// `cap` 0 with a NULL buffer only reports; a buffer too small is ADPO_STATUS_SHAPE_MISMATCH
/// with the length still reported (so that a caller can grow its buffer and call again).
pub fn write_sized(ids: &[i64], out_ids: *mut i64, cap: usize, out_len: *mut usize) -> Result<()> {
    write_out(out_len, "out_len", ids.len())?;
    if out_ids.is_null() && cap == 0 {
        return Ok(());
    }
    if cap < ids.len() {
        return Err(Error::shape(format!(
            "cap = {cap}, but there are {} ids (*out_len says so: call again with a buffer that large)",
            ids.len()
        )));
    }
    if !ids.is_empty() {
        if out_ids.is_null() {
            return Err(Error::null("out_ids"));
        }
        // SAFETY: non-NULL and valid for cap >= ids.len() writes (caller contract).
        unsafe { std::ptr::copy_nonoverlapping(ids.as_ptr(), out_ids, ids.len()) };
    }
    Ok(())
}
