//! Where a parsed file's bytes live: a read-only memory map of the file, or a buffer the caller
//! handed over (tests, fuzzing).

use std::fs::File;
use std::path::Path;

use crate::FormatError;

pub(crate) enum Backing {
    Mmap(memmap2::Mmap),
    Bytes(Vec<u8>),
}

impl Backing {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Bytes(b) => b,
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
            return Ok(Backing::Bytes(Vec::new()));
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
