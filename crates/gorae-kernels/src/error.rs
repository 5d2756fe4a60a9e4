//! The one error type of the kernel entry points.
//!
//! Kernels are called with lengths computed elsewhere (from GGUF shapes, from model configs), so
//! a mismatch is a bug or a bad file, never something to paper over: every checked entry point
//! returns one of these instead of panicking or silently truncating.

use crate::GgmlType;

/// Why a kernel refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// gorae has no kernels for this type (IQ*, TQ*, MXFP4, integer types, F64).
    #[error("type {ty} is not supported by gorae's kernels")]
    UnsupportedType { ty: GgmlType },

    /// An element count that is not a whole number of blocks of the type.
    #[error("{what}: {n} elements is not a whole number of {ty} blocks of {block_size}")]
    NotWholeBlocks {
        what: &'static str,
        ty: GgmlType,
        n: usize,
        block_size: usize,
    },

    /// A buffer whose length disagrees with the element count and type it is used with.
    #[error("{what}: expected {expected} {unit}, got {got}")]
    LengthMismatch {
        what: &'static str,
        unit: &'static str,
        expected: usize,
        got: usize,
    },

    /// A kernel variant was asked for on a CPU that cannot run it.
    #[error("instruction set {isa} is not available on this CPU")]
    IsaUnavailable { isa: crate::Isa },

    /// A size computation overflowed `usize` (a shape no machine can hold).
    #[error("{what}: size overflows usize")]
    SizeOverflow { what: &'static str },
}
