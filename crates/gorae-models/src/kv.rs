//! The standard key/value cache: preallocated for `n_ctx` positions, written in place (no
//! concatenation, llama2.c's `RunState`), truncatable so a caller can reuse a shared prefix.
//!
//! A sliding-window layer (EXAONE 4's local layers) keeps only its window: a ring of `window`
//! positions, position `p` in slot `p % window`, so its memory does not grow with the context.

use gorae_kernels::kv::{KvRows, KvType, f16, f32_to_f16};

/// `n` zeros, written now. `vec![0.0; n]` takes zeroed pages from the kernel, which maps each
/// one on its first write: the decode loop then paid a page fault and a page clear every few
/// positions of every layer (SmolLM2 Q4_1, 8 sequences decoding: 254 µs of a 5 ms pass went
/// to writing the new keys and values). Caches are preallocated for their whole context, as
/// llama.cpp clears its KV buffer at creation, so the memory is the cache's from the start.
fn mapped_zeros<T: Copy>(n: usize, zero: T) -> Vec<T> {
    let mut v = vec![zero; n];
    // One store per 4 KiB (every page holds one chunk's start). `black_box` hides the zeros
    // already there, so the compiler cannot drop the stores as redundant.
    for page in v.chunks_mut((4096 / std::mem::size_of::<T>().max(1)).max(1)) {
        page[0] = std::hint::black_box(zero);
    }
    v
}

/// Keys and values in the cache's element type.
enum Store {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
}

/// Keys and values, per layer `[rows, kv_dim]` (`rows` = `n_ctx`, or the window of a
/// sliding-window layer), with `kv_dim = n_head_kv * head_dim`, as f32 or f16 ([`KvType`]).
pub struct KvCache {
    pub n_layer: usize,
    pub n_ctx: usize,
    pub kv_dim: usize,
    store: Store, // k, v: [sum of rows, kv_dim]
    /// `[n_layer]`: first row of each layer.
    base: Vec<usize>,
    /// `[n_layer]`: the window of a sliding-window layer (its ring holds `min(window, n_ctx)`).
    window: Vec<Option<usize>>,
    len: usize,
}

impl KvCache {
    /// An f32 cache.
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Self {
        Self::with_windows(n_ctx, kv_dim, &vec![None; n_layer], KvType::F32)
    }

    /// A cache whose layer `il` keeps only the last `windows[il]` positions when that is set.
    pub fn with_windows(
        n_ctx: usize,
        kv_dim: usize,
        windows: &[Option<usize>],
        ty: KvType,
    ) -> Self {
        let mut base = Vec::with_capacity(windows.len());
        let mut rows = 0;
        for w in windows {
            base.push(rows);
            rows += w.map_or(n_ctx, |w| w.min(n_ctx));
        }
        let n = rows * kv_dim;
        let store = match ty {
            KvType::F32 => Store::F32 {
                k: mapped_zeros(n, 0.0),
                v: mapped_zeros(n, 0.0),
            },
            KvType::F16 => Store::F16 {
                k: mapped_zeros(n, f16::ZERO),
                v: mapped_zeros(n, f16::ZERO),
            },
        };
        KvCache {
            n_layer: windows.len(),
            n_ctx,
            kv_dim,
            store,
            base,
            window: windows.to_vec(),
            len: 0,
        }
    }

    pub fn kv_type(&self) -> KvType {
        match self.store {
            Store::F32 { .. } => KvType::F32,
            Store::F16 { .. } => KvType::F16,
        }
    }

    /// The window of layer `il`, `None` when it keeps every position.
    pub fn window(&self, il: usize) -> Option<usize> {
        self.window.get(il).copied().flatten()
    }

    /// Positions layer `il` can hold: `n_ctx`, or the ring size of a sliding-window layer.
    pub fn layer_rows(&self, il: usize) -> usize {
        self.window(il).map_or(self.n_ctx, |w| w.min(self.n_ctx))
    }

    /// Positions filled so far; the next token goes to position `len()`.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on. A ring has already overwritten the positions a
    /// deeper rewind would need again, so then everything is forgotten (`len()` says what is kept).
    pub fn truncate(&mut self, len: usize) {
        let len = self.len.min(len);
        let keeps = (0..self.n_layer).all(|il| match self.window(il) {
            None => true,
            // The next position after `len` needs `len - (w - 1) ..`; the ring holds the last
            // `rows` positions written.
            Some(w) => len.saturating_sub(w - 1) >= self.len.saturating_sub(self.layer_rows(il)),
        });
        self.len = if keeps { len } else { 0 };
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Bytes each further position adds, all layers (sliding-window layers add none): what
    /// `inspect` reports.
    pub fn bytes_per_token(&self) -> usize {
        let full = self.window.iter().filter(|w| w.is_none()).count();
        2 * full * self.kv_dim * self.kv_type().size()
    }

    fn range(&self, il: usize, from: usize, to: usize) -> std::ops::Range<usize> {
        let base = self.base[il] * self.kv_dim;
        base + from * self.kv_dim..base + to * self.kv_dim
    }

    fn rows(&self, keys: bool, r: std::ops::Range<usize>) -> KvRows<'_> {
        match &self.store {
            Store::F32 { k, v } => KvRows::F32(&(if keys { k } else { v })[r]),
            Store::F16 { k, v } => KvRows::F16(&(if keys { k } else { v })[r]),
        }
    }

    /// Stores `k`, `v` (f32, whole rows) at element range `r` of both, converting to the
    /// cache's type.
    fn store(&mut self, r: std::ops::Range<usize>, k: &[f32], v: &[f32]) {
        match &mut self.store {
            Store::F32 { k: ck, v: cv } => {
                ck[r.clone()].copy_from_slice(k);
                cv[r].copy_from_slice(v);
            }
            Store::F16 { k: ck, v: cv } => {
                f32_to_f16(k, &mut ck[r.clone()]);
                f32_to_f16(v, &mut cv[r]);
            }
        }
    }

    /// The whole ring of sliding-window layer `il` (keys, values), `[layer_rows, kv_dim]` each:
    /// position `p` is in row `p % layer_rows`.
    pub fn ring(&self, il: usize) -> (KvRows<'_>, KvRows<'_>) {
        let r = self.range(il, 0, self.layer_rows(il));
        (self.rows(true, r.clone()), self.rows(false, r))
    }

    /// Stores the keys and values of position `pos` (`[kv_dim]` each) in layer `il`'s ring.
    pub fn ring_write(&mut self, il: usize, pos: usize, k: &[f32], v: &[f32]) {
        let slot = pos % self.layer_rows(il).max(1);
        let r = self.range(il, slot, slot + 1);
        self.store(r, k, v);
    }

    /// Keys of layer `il` for positions `from..to`, `[to - from, kv_dim]`.
    pub fn k(&self, il: usize, from: usize, to: usize) -> KvRows<'_> {
        self.rows(true, self.range(il, from, to))
    }

    pub fn v(&self, il: usize, from: usize, to: usize) -> KvRows<'_> {
        self.rows(false, self.range(il, from, to))
    }

    /// Stores the keys and values of positions `pos0..` of layer `il` (`k`, `v`:
    /// `[n, kv_dim]` f32, converted to the cache's type).
    pub fn write(&mut self, il: usize, pos0: usize, k: &[f32], v: &[f32]) {
        let n = k.len() / self.kv_dim.max(1);
        let r = self.range(il, pos0, pos0 + n);
        self.store(r, k, v);
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
            data: mapped_zeros(n_layer * n_ctx * width, 0.0),
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

    /// Whether a pass that wrote rows and then failed leaves what the cache held intact: false
    /// when a sliding-window layer's ring may have overwritten positions still in its window.
    pub fn survives_failed_pass(&self) -> bool {
        match self {
            SeqCache::Standard(kv) => (0..kv.n_layer).all(|il| kv.window(il).is_none()),
            SeqCache::Latent(_) => true,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `rows`, as f32.
    fn values(rows: KvRows<'_>) -> Vec<f32> {
        match rows {
            KvRows::F32(s) => s.to_vec(),
            KvRows::F16(s) => s.iter().map(|x| x.to_f32()).collect(),
        }
    }

    #[test]
    fn f16_caches_store_rounded_rows_in_half_the_bytes() {
        let mut a = KvCache::new(2, 8, 4);
        let mut b = KvCache::with_windows(8, 4, &[None, None], KvType::F16);
        assert_eq!(b.kv_type(), KvType::F16);
        assert_eq!(2 * b.bytes_per_token(), a.bytes_per_token());
        let k: Vec<f32> = (0..12).map(|i| i as f32 / 3.0).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        a.write(1, 2, &k, &v);
        b.write(1, 2, &k, &v);
        let rounded: Vec<f32> = k.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        assert_eq!(values(b.k(1, 2, 5)), rounded);
        assert_eq!(values(a.k(1, 2, 5)), k);
        assert_eq!(
            values(b.v(1, 3, 4)),
            values(b.k(1, 3, 4)).iter().map(|x| -x).collect::<Vec<_>>()
        );
    }

    #[test]
    fn window_layers_keep_only_their_window() {
        // Layer 0 full, layer 1 a ring of 4.
        let mut kv = KvCache::with_windows(100, 2, &[None, Some(4)], KvType::F32);
        assert_eq!(
            kv.k(0, 0, 100).len() + kv.ring(1).0.len(),
            (100 + 4) * 2,
            "the ring does not grow with n_ctx"
        );
        assert_eq!(kv.bytes_per_token(), 2 * 2 * 4, "only the full layer grows");
        for p in 0..10 {
            let x = [p as f32, -(p as f32)];
            kv.ring_write(1, p, &x, &x);
        }
        kv.set_len(10);
        let (k, _) = kv.ring(1);
        // Positions 6..10 in slots 6%4=2, 3, 0, 1.
        assert_eq!(values(k), [8.0, -8.0, 9.0, -9.0, 6.0, -6.0, 7.0, -7.0]);
        // Rewinding one position keeps the window the next token needs; further cannot.
        kv.truncate(9);
        assert_eq!(kv.len(), 9);
        kv.truncate(5);
        assert_eq!(kv.len(), 0);
        // Without a window, any rewind is kept.
        let mut full = KvCache::new(2, 16, 2);
        full.set_len(12);
        full.truncate(3);
        assert_eq!(full.len(), 3);
    }
}
