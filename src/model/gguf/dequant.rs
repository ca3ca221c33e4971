//! ggml tensor types and their dequantization to float32, block by block, as ggml's reference
//! `dequantize_row_*` (ggml-quants.c) and the `gguf` Python package compute them: the same
//! float32 operations in the same order, so the values are bit-identical to what transformers'
//! GGUF loader produces. Types adpo does not dequantize (the i-quants, ternary, MXFP4, integer
//! tensors) are refused by name.

use rayon::prelude::*;

/// The tensor types adpo reads. Values are ggml's type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    F64 = 28,
    BF16 = 30,
}

/// ggml's names of the types adpo does not read, by id (for messages).
const OTHER_TYPES: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F64,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Elements per k-quant super-block.
const QK_K: usize = 256;

impl GgmlType {
    /// The type of ggml id `id`; Err: a message naming it (known but not read, or unknown).
    pub fn from_id(id: u32) -> std::result::Result<GgmlType, String> {
        if let Some(t) = SUPPORTED.iter().find(|t| **t as u32 == id) {
            return Ok(*t);
        }
        let names: Vec<&str> = SUPPORTED.iter().map(|t| t.name()).collect();
        let what = match OTHER_TYPES.iter().find(|(i, _)| *i == id) {
            Some((_, name)) => format!("type {name}, which adpo does not dequantize"),
            None => format!("unknown ggml type id {id}"),
        };
        Err(format!("{what}; supported: {}", names.join(", ")))
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            F64 => "F64",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
        }
    }

    /// (elements, bytes) of one block (ggml's blck_size and type_size).
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q2K => (QK_K, 84),
            Q3K => (QK_K, 110),
            Q4K => (QK_K, 144),
            Q5K => (QK_K, 176),
            Q6K => (QK_K, 210),
        }
    }
}

/// IEEE half to float (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let (exp, man) = (((h >> 10) & 0x1f) as u32, (h & 0x3ff) as u32);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m * 2^-24, exact in float32.
            let v = m as f32 / (1u32 << 24) as f32;
            return if sign != 0 { -v } else { v };
        }
        (31, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Dequantizes `bytes` (whole blocks of `t`, a quantized type) into `out` (as many elements).
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (n, size) = t.block();
    debug_assert_eq!(bytes.len() / size * n, out.len());
    let f: fn(&[u8], &mut [f32]) = match t {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2K => q2_k,
        GgmlType::Q3K => q3_k,
        GgmlType::Q4K => q4_k,
        GgmlType::Q5K => q5_k,
        GgmlType::Q6K => q6_k,
        _ => unreachable!("plain float types are not dequantized block-wise"),
    };
    out.par_chunks_mut(n)
        .zip(bytes.par_chunks(size))
        .for_each(|(y, x)| f(x, y));
}

fn q4_0(x: &[u8], y: &mut [f32]) {
    let d = half(x, 0);
    for j in 0..16 {
        y[j] = ((x[2 + j] & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((x[2 + j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(x: &[u8], y: &mut [f32]) {
    let (d, m) = (half(x, 0), half(x, 2));
    for j in 0..16 {
        y[j] = (x[4 + j] & 0x0f) as f32 * d + m;
        y[j + 16] = (x[4 + j] >> 4) as f32 * d + m;
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block whose high bits are the u32 at `qh`, low at `qs`.
fn five_bits(x: &[u8], qh: usize, qs: usize, j: usize) -> (i32, i32) {
    let h = u32::from_le_bytes(x[qh..qh + 4].try_into().expect("4 bytes"));
    let h0 = ((h >> j) << 4) & 0x10;
    let h1 = (h >> (j + 12)) & 0x10;
    (
        ((x[qs + j] & 0x0f) as u32 | h0) as i32,
        ((x[qs + j] >> 4) as u32 | h1) as i32,
    )
}

fn q5_0(x: &[u8], y: &mut [f32]) {
    let d = half(x, 0);
    for j in 0..16 {
        let (a, b) = five_bits(x, 2, 6, j);
        y[j] = (a - 16) as f32 * d;
        y[j + 16] = (b - 16) as f32 * d;
    }
}

fn q5_1(x: &[u8], y: &mut [f32]) {
    let (d, m) = (half(x, 0), half(x, 2));
    for j in 0..16 {
        let (a, b) = five_bits(x, 4, 8, j);
        y[j] = a as f32 * d + m;
        y[j + 16] = b as f32 * d + m;
    }
}

fn q8_0(x: &[u8], y: &mut [f32]) {
    let d = half(x, 0);
    for j in 0..32 {
        y[j] = (x[2 + j] as i8) as f32 * d;
    }
}

fn q2_k(x: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&x[0..16], &x[16..80]);
    let (d, dmin) = (half(x, 80), half(x, 82));
    let mut is = 0;
    for (n, q) in qs.chunks(32).enumerate() {
        for j in 0..4 {
            let shift = 2 * j;
            for half_ in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
                let base = n * 128 + j * 32 + half_ * 16;
                for l in 0..16 {
                    y[base + l] = dl * ((q[half_ * 16 + l] >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// Q3_K's sixteen 6-bit scales, unpacked from 12 bytes as ggml does.
fn q3_k_scales(packed: &[u8]) -> [i8; 16] {
    let word = |i: usize| u32::from_le_bytes(packed[4 * i..4 * i + 4].try_into().expect("4"));
    let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & k2) | ((tmp & k1) << 4),
        (a1 & k2) | (((tmp >> 2) & k1) << 4),
        ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
        ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, w) in aux.iter().enumerate() {
        for (k, b) in w.to_le_bytes().iter().enumerate() {
            out[4 * i + k] = *b as i8;
        }
    }
    out
}

fn q3_k(x: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&x[0..32], &x[32..96]);
    let scales = q3_k_scales(&x[96..108]);
    let d = half(x, 108);
    let (mut is, mut m) = (0, 1u8);
    for (n, q) in qs.chunks(32).enumerate() {
        for j in 0..4 {
            let shift = 2 * j;
            for half_ in 0..2 {
                let dl = d * (scales[is] as i32 - 32) as f32;
                is += 1;
                let base = n * 128 + j * 32 + half_ * 16;
                for l in 0..16 {
                    let k = half_ * 16 + l;
                    let high = if hmask[k] & m != 0 { 0 } else { 4 };
                    y[base + l] = dl * (((q[k] >> shift) & 3) as i32 - high) as f32;
                }
            }
            m <<= 1;
        }
    }
}

/// The scale and min of sub-block `j` of a Q4_K/Q5_K block (ggml's get_scale_min_k4).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(x: &[u8], y: &mut [f32]) {
    let (d, dmin, scales) = (half(x, 0), half(x, 2), &x[4..16]);
    for (i, q) in x[16..144].chunks(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * i, scales);
        let (s2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            y[64 * i + l] = d1 * (q[l] & 0x0f) as f32 - m1;
            y[64 * i + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(x: &[u8], y: &mut [f32]) {
    let (d, dmin, scales, qh) = (half(x, 0), half(x, 2), &x[4..16], &x[16..48]);
    for (i, ql) in x[48..176].chunks(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * i, scales);
        let (s2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * i + l] = d1 * ((ql[l] & 0x0f) + h1) as f32 - m1;
            y[64 * i + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn q6_k(x: &[u8], y: &mut [f32]) {
    let d = half(x, 208);
    for n in 0..2 {
        let (ql, qh) = (&x[64 * n..64 * n + 64], &x[128 + 32 * n..160 + 32 * n]);
        let sc = |k: usize| x[192 + 8 * n + k] as i8 as f32;
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * sc(is) * q1 as f32;
            y[l + 32] = d * sc(is + 2) * q2 as f32;
            y[l + 64] = d * sc(is + 4) * q3 as f32;
            y[l + 96] = d * sc(is + 6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn unsupported_types_are_named() {
        assert!(GgmlType::from_id(16).unwrap_err().contains("IQ2_XXS"));
        assert!(GgmlType::from_id(999)
            .unwrap_err()
            .contains("unknown ggml type id 999"));
        assert_eq!(GgmlType::from_id(3), Ok(GgmlType::Q4_1));
    }
}
