//! The KV cache: keys and values of every past position, per layer, stored as f16 (as
//! llama.cpp does by default), sized once from the context length.

use half::f16;

/// Keys and values for `n_ctx` positions of `n_layer` layers.
#[derive(Debug)]
pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    k_dim: usize,
    v_dim: usize,
    k: Vec<f16>,
    v: Vec<f16>,
}

impl KvCache {
    /// Bytes a cache of these dimensions takes.
    pub fn bytes_for(n_layer: usize, n_ctx: usize, k_dim: usize, v_dim: usize) -> u64 {
        (n_layer as u64) * (n_ctx as u64) * ((k_dim + v_dim) as u64) * 2
    }

    /// An empty cache; `None` if the size overflows or cannot be allocated.
    pub fn new(n_layer: usize, n_ctx: usize, k_dim: usize, v_dim: usize) -> Option<Self> {
        let nk = n_layer.checked_mul(n_ctx)?.checked_mul(k_dim)?;
        let nv = n_layer.checked_mul(n_ctx)?.checked_mul(v_dim)?;
        let mut k = Vec::new();
        k.try_reserve_exact(nk).ok()?;
        k.resize(nk, f16::ZERO);
        let mut v = Vec::new();
        v.try_reserve_exact(nv).ok()?;
        v.resize(nv, f16::ZERO);
        Some(KvCache {
            n_layer,
            n_ctx,
            k_dim,
            v_dim,
            k,
            v,
        })
    }

    /// Positions it can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Layers.
    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// Stores the key and value rows of position `pos` in layer `il`.
    pub fn store(&mut self, il: usize, pos: usize, k: &[f32], v: &[f32]) {
        let ko = (il * self.n_ctx + pos) * self.k_dim;
        for (d, &s) in self.k[ko..ko + self.k_dim].iter_mut().zip(k) {
            *d = f16::from_f32(s);
        }
        let vo = (il * self.n_ctx + pos) * self.v_dim;
        for (d, &s) in self.v[vo..vo + self.v_dim].iter_mut().zip(v) {
            *d = f16::from_f32(s);
        }
    }

    /// The keys of layer `il`, one row of `k_dim` per position.
    pub fn keys(&self, il: usize) -> &[f16] {
        let o = il * self.n_ctx * self.k_dim;
        &self.k[o..o + self.n_ctx * self.k_dim]
    }

    /// The values of layer `il`, one row of `v_dim` per position.
    pub fn values(&self, il: usize) -> &[f16] {
        let o = il * self.n_ctx * self.v_dim;
        &self.v[o..o + self.n_ctx * self.v_dim]
    }
}
