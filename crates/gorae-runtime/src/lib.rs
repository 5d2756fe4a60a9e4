//! gorae-runtime: what runs a model over time: the sampler, stop strings, the `<think>` splitter,
//! the per-sequence engine, and `.npy` exchange for the conformance commands.

pub mod engine;
pub mod memory;
pub mod npy;
pub mod sampler;
pub mod speculative;
pub mod stop;
pub mod think;

pub use engine::Engine;
pub use sampler::{Sampler, SamplerConfig};
pub use stop::{StopMatcher, StopOutcome};
pub use think::{Piece, ThinkSplitter};
