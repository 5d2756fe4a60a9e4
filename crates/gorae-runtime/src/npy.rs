//! Minimal `.npy` (NumPy format 1.0) reading and writing of little-endian f32 arrays, for logits
//! the conformance commands exchange with Python tooling.

use std::io::{Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an f32 .npy file: {0}")]
    Format(String),
}

/// Writes `data` with `shape` as a C-order `<f4` array.
pub fn write_f32(w: &mut impl Write, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic(6) + version(2) + len(2) + header + '\n' is padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    let len =
        u16::try_from(header.len()).map_err(|_| NpyError::Format("header too long".into()))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut buf = Vec::with_capacity(data.len() * 4);
    for v in data {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    w.write_all(&buf)?;
    Ok(())
}

/// Reads a C-order `<f4` array: its shape and values.
pub fn read_f32(r: &mut impl Read) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes)?;
    let bad = |m: &str| NpyError::Format(m.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing magic"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown version")),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("only C-order <f4 is supported"));
    }
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape overflow"))?;
    let data = &bytes[hstart + hlen..];
    if data.len() != n.checked_mul(4).ok_or_else(|| bad("shape overflow"))? {
        return Err(bad("data length does not match shape"));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for shape in [vec![5usize], vec![2, 3]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let mut buf = Vec::new();
            write_f32(&mut buf, &shape, &data).unwrap();
            assert_eq!((buf.len() - data.len() * 4) % 64, 0);
            let (s, d) = read_f32(&mut buf.as_slice()).unwrap();
            assert_eq!(s, shape);
            assert_eq!(d, data);
        }
    }
}
