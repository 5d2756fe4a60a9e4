//! The standard key/value cache: preallocated for `n_ctx` positions, written in place (no
//! concatenation, llama2.c's `RunState`), truncatable so a caller can reuse a shared prefix.

/// f32 keys and values, `[n_layer, n_ctx, kv_dim]` each, with `kv_dim = n_head_kv * head_dim`.
pub struct KvCache {
    pub n_layer: usize,
    pub n_ctx: usize,
    pub kv_dim: usize,
    k: Vec<f32>, // [n_layer, n_ctx, kv_dim]
    v: Vec<f32>, // [n_layer, n_ctx, kv_dim]
    len: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Self {
        let n = n_layer * n_ctx * kv_dim;
        KvCache {
            n_layer,
            n_ctx,
            kv_dim,
            k: vec![0.0; n],
            v: vec![0.0; n],
            len: 0,
        }
    }

    /// Positions filled so far; the next token goes to position `len()`.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Bytes per cached position, all layers: what `inspect` reports.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.n_layer * self.kv_dim * std::mem::size_of::<f32>()
    }

    fn range(&self, il: usize, from: usize, to: usize) -> std::ops::Range<usize> {
        let base = il * self.n_ctx * self.kv_dim;
        base + from * self.kv_dim..base + to * self.kv_dim
    }

    /// Keys of layer `il` for positions `from..to`, `[to - from, kv_dim]`.
    pub fn k(&self, il: usize, from: usize, to: usize) -> &[f32] {
        &self.k[self.range(il, from, to)]
    }

    pub fn v(&self, il: usize, from: usize, to: usize) -> &[f32] {
        &self.v[self.range(il, from, to)]
    }

    pub fn k_mut(&mut self, il: usize, from: usize, to: usize) -> &mut [f32] {
        let r = self.range(il, from, to);
        &mut self.k[r]
    }

    pub fn v_mut(&mut self, il: usize, from: usize, to: usize) -> &mut [f32] {
        let r = self.range(il, from, to);
        &mut self.v[r]
    }
}

/// MLA's compressed cache: per token per layer only the normalized latent `c_kv`
/// (`kv_lora_rank`) and the shared rope key `k_pe` (`qk_rope_head_dim`), `[n_layer, n_ctx, width]`.
/// Keys and values for every head are recomputed from it (absorbed into the query and output).
pub struct LatentKvCache {
    pub n_layer: usize,
    pub n_ctx: usize,
    /// `kv_lora_rank + qk_rope_head_dim`
    pub width: usize,
    data: Vec<f32>, // [n_layer, n_ctx, width]
    len: usize,
    /// Positions the MTP block's layer (the last one, when present) holds.
    mtp_len: usize,
}

impl LatentKvCache {
    pub fn new(n_layer: usize, n_ctx: usize, width: usize) -> Self {
        LatentKvCache {
            n_layer,
            n_ctx,
            width,
            data: vec![0.0; n_layer * n_ctx * width],
            len: 0,
            mtp_len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.mtp_len = self.mtp_len.min(len);
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    pub fn mtp_len(&self) -> usize {
        self.mtp_len
    }

    pub fn truncate_mtp(&mut self, len: usize) {
        self.mtp_len = self.mtp_len.min(len);
    }

    pub(crate) fn set_mtp_len(&mut self, len: usize) {
        self.mtp_len = len;
    }

    pub fn bytes_per_token(&self) -> usize {
        self.n_layer * self.width * std::mem::size_of::<f32>()
    }

    fn range(&self, il: usize, from: usize, to: usize) -> std::ops::Range<usize> {
        let base = il * self.n_ctx * self.width;
        base + from * self.width..base + to * self.width
    }

    /// Rows `from..to` of layer `il`, `[to - from, width]`.
    pub fn rows(&self, il: usize, from: usize, to: usize) -> &[f32] {
        &self.data[self.range(il, from, to)]
    }

    pub fn rows_mut(&mut self, il: usize, from: usize, to: usize) -> &mut [f32] {
        let r = self.range(il, from, to);
        &mut self.data[r]
    }
}

/// One sequence's cache, whichever kind its model keeps.
pub enum SeqCache {
    Standard(KvCache),
    Latent(LatentKvCache),
}

impl SeqCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        match self {
            SeqCache::Standard(kv) => kv.len(),
            SeqCache::Latent(kv) => kv.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn n_ctx(&self) -> usize {
        match self {
            SeqCache::Standard(kv) => kv.n_ctx,
            SeqCache::Latent(kv) => kv.n_ctx,
        }
    }

    /// Forgets every position from `len` on (reuse of a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        match self {
            SeqCache::Standard(kv) => kv.truncate(len),
            SeqCache::Latent(kv) => kv.truncate(len),
        }
    }

    /// Bytes held per token, all layers.
    pub fn bytes_per_token(&self) -> usize {
        match self {
            SeqCache::Standard(kv) => kv.bytes_per_token(),
            SeqCache::Latent(kv) => kv.bytes_per_token(),
        }
    }

    pub(crate) fn standard(&self) -> Option<&KvCache> {
        match self {
            SeqCache::Standard(kv) => Some(kv),
            SeqCache::Latent(_) => None,
        }
    }

    pub(crate) fn standard_mut(&mut self) -> Option<&mut KvCache> {
        match self {
            SeqCache::Standard(kv) => Some(kv),
            SeqCache::Latent(_) => None,
        }
    }

    pub(crate) fn latent(&self) -> Option<&LatentKvCache> {
        match self {
            SeqCache::Latent(kv) => Some(kv),
            SeqCache::Standard(_) => None,
        }
    }

    pub(crate) fn latent_mut(&mut self) -> Option<&mut LatentKvCache> {
        match self {
            SeqCache::Latent(kv) => Some(kv),
            SeqCache::Standard(_) => None,
        }
    }
}
