//! DeepSeek's block-FP8 checkpoints: `float8_e4m3fn` weights with a sibling `<name>_scale_inv`
//! f32 tensor of `[ceil(rows/128), ceil(cols/128)]` multipliers (DeepSeek-V3 `README_WEIGHTS.md`,
//! `inference/kernel.py weight_dequant`). Dequantized once, at load, tensor by tensor:
//! `W[i, j] = f32(q[i, j]) * scale_inv[i / 128, j / 128]`, one f32 multiply, so the result is
//! bit-identical to a numpy reference doing the same.

/// e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; 0x7F/0xFF are NaN;
/// exponent 0 is subnormal (m/8 · 2^-6). Every code maps exactly to an f32.
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = (code >> 3) & 0x0f;
    let man = (code & 0x07) as f32;
    if exp == 0x0f && code & 0x07 == 0x07 {
        return f32::NAN;
    }
    let mag = if exp == 0 {
        man / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp as i32 - 7)
    };
    sign * mag
}

/// The 256 codes decoded once.
pub fn e4m3_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = e4m3_to_f32(i as u8);
    }
    t
}

/// Dequantizes `codes` (`[rows, cols]`) with per-block multipliers `scale_inv`
/// (`[ceil(rows/block), ceil(cols/block)]`) into f32. Returns `None` when the sizes disagree.
pub fn dequantize_blocks(
    codes: &[u8],
    rows: usize,
    cols: usize,
    scale_inv: &[f32],
    block: usize,
) -> Option<Vec<f32>> {
    if block == 0 || codes.len() != rows.checked_mul(cols)? {
        return None;
    }
    let (br, bc) = (rows.div_ceil(block), cols.div_ceil(block));
    if scale_inv.len() != br.checked_mul(bc)? {
        return None;
    }
    let table = e4m3_table();
    let mut out = Vec::with_capacity(codes.len());
    for i in 0..rows {
        let srow = &scale_inv[(i / block) * bc..(i / block + 1) * bc];
        for (j, &c) in codes[i * cols..(i + 1) * cols].iter().enumerate() {
            out.push(table[c as usize] * srow[j / block]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_256_codes_decode_exactly() {
        // Independent decoding: enumerate every finite e4m3 value from its definition and compare
        // bit patterns; NaN codes are 0x7F and 0xFF only.
        for code in 0u16..256 {
            let c = code as u8;
            let v = e4m3_to_f32(c);
            let (s, e, m) = ((c >> 7) as i32, ((c >> 3) & 15) as i32, (c & 7) as i32);
            if e == 15 && m == 7 {
                assert!(v.is_nan(), "{c:#x}");
                continue;
            }
            let mag = if e == 0 {
                m as f64 * 2f64.powi(-9)
            } else {
                (8 + m) as f64 * 2f64.powi(e - 10)
            };
            let expect = if s == 1 { -mag } else { mag } as f32;
            assert_eq!(v.to_bits(), expect.to_bits(), "{c:#x}");
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0xFE), -448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x80).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn partial_edge_blocks_use_their_own_scale() {
        // [3, 5] with block 2: scales [2, 3].
        let codes = vec![0x38u8; 15]; // 1.0
        let scales = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = dequantize_blocks(&codes, 3, 5, &scales, 2).unwrap();
        assert_eq!(&w[..5], &[1.0, 1.0, 2.0, 2.0, 3.0]);
        assert_eq!(&w[10..], &[4.0, 4.0, 5.0, 5.0, 6.0]);
        assert!(dequantize_blocks(&codes, 3, 5, &scales[..5], 2).is_none());
    }
}
