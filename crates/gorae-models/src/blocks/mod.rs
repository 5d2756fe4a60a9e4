//! Building blocks shared by every family: normalization, attention over a KV cache, the gated FFN.
//! No architecture `match` lives here; families pass what differs as arguments.

pub mod attention;
pub mod ffn;
pub mod moe;
pub mod norm;
