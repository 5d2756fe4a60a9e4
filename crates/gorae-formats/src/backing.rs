//! Where a parsed file's bytes live: a read-only memory map of the file, or a buffer the caller
//! handed over (tests, fuzzing).

use std::fs::File;
use std::path::Path;

use crate::FormatError;

pub(crate) enum Backing {
    Mmap(memmap2::Mmap),
    Bytes(AlignedBytes),
}

/// In-memory file bytes whose start is 64-byte aligned, so that tensor data parsed from memory
/// has the same alignment guarantee as data in a (page-aligned) mapping: kernels that cast a
/// block slice need not care where the file came from.
pub(crate) struct AlignedBytes {
    chunks: Vec<Chunk>,
    len: usize,
}

#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

impl AlignedBytes {
    pub(crate) fn new(bytes: &[u8]) -> AlignedBytes {
        let mut chunks = vec![Chunk([0; 64]); bytes.len().div_ceil(64)];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut chunks);
        if let Some(dst) = dst.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        AlignedBytes {
            chunks,
            len: bytes.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.chunks);
        all.get(..self.len).unwrap_or(all)
    }
}

impl Backing {
    /// An in-memory image, copied once into an aligned buffer.
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Backing {
        Backing::Bytes(AlignedBytes::new(&bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Bytes(b) => b.as_slice(),
        }
    }

    /// Maps `path` read-only. An empty file becomes an empty buffer (mapping zero bytes fails on
    /// some platforms), which the parsers then reject as truncated.
    pub(crate) fn map(path: &Path) -> Result<Backing, FormatError> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                FormatError::MissingFile {
                    path: path.to_owned(),
                }
            } else {
                FormatError::io(path, e)
            }
        })?;
        let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
        if len == 0 {
            return Ok(Backing::from_vec(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this process, so it can only be invalidated
        // by another process truncating or rewriting the file while it is mapped (a later access
        // then raises SIGBUS). Model files are not modified in place while loaded, and gorae never
        // maps a file it writes; this is the documented contract of every `open` in this crate.
        // The mapped bytes themselves are untrusted and validated by the parsers.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }
            .map_err(|e| FormatError::io(path, e))?;
        Ok(Backing::Mmap(map))
    }
}
