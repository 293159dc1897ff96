//! Attention over KV caches stored in another type than f32 ([`hearth_core::KvType`]): the
//! chunk loop of `attn.rs`, over each chunk's rows converted to f32 as the chunk is reached
//! (into a tile that stays in L1), so the cache is read in its own type, block by block, and
//! never converted as a whole. Rotated types take rotated queries and give rotated outputs:
//! [`rotate_queries`] and [`unrotate`] around the loop.
use crate::attn::{C, Chunks, Rows};
use hearth_core::kv::{rotate, unrotate as unrotate_rows};
use hearth_core::{AttnParams, Error, KvType, Pages, Result};
use hearth_quant::kv::{dequantize_row, quantize_row};

/// The bytes of a cache (f32 words holding a type's blocks).
pub(crate) fn bytes(w: &[f32]) -> &[u8] {
    // SAFETY: u8 has no alignment and no invalid values; the length covers the same memory.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), std::mem::size_of_val(w)) }
}

/// [`bytes`], writable.
pub(crate) fn bytes_mut(w: &mut [f32]) -> &mut [u8] {
    // SAFETY: as for `bytes`; every bit pattern is a valid f32 as well.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(w)) }
}

/// A converted chunk's keys and values, one tile per worker thread.
#[derive(Default)]
pub(crate) struct Tiles {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// One KV head's rows of caches in the types of `p.kv`.
pub(crate) struct QRows<'a> {
    pub k: &'a [u8],
    pub v: &'a [u8],
    pub p: &'a AttnParams<'a>,
    pub pages: Option<Pages<'a>>,
    pub kh: usize,
    pub tiles: &'a mut Tiles,
}

impl Chunks for QRows<'_> {
    #[inline(always)]
    fn load(&mut self, c0: usize, lo: usize, hi: usize, rows: &mut [usize; C]) -> Rows<'_> {
        let p = self.p;
        let (hd, vd) = (p.head_dim, p.v_dim);
        let (kb, vb) = (p.kv.k.bytes(hd), p.kv.v.bytes(vd));
        let t = &mut *self.tiles;
        t.k.resize(C * hd, 0.0);
        t.v.resize(C * vd, 0.0);
        for j in lo..=hi {
            let i = j - c0;
            rows[i] = i;
            let row = self.pages.map_or(j, |pg| pg.row(j));
            let (ks, vs) = (
                row * p.k_stride * 4 + self.kh * kb,
                row * p.v_stride * 4 + self.kh * vb,
            );
            // (rows and sizes were checked by `check_attn_rows`; a failure leaves zeros)
            let _ = dequantize_row(p.kv.k, &self.k[ks..ks + kb], &mut t.k[i * hd..(i + 1) * hd]);
            let _ = dequantize_row(p.kv.v, &self.v[vs..vs + vb], &mut t.v[i * vd..(i + 1) * vd]);
        }
        Rows {
            k: &t.k,
            v: &t.v,
            k_stride: hd,
            v_stride: vd,
            k_off: 0,
            v_off: 0,
        }
    }
}

/// A copy of the queries `[rows, n_head, head_dim]`, rotated as the keys were stored.
pub(crate) fn rotate_queries(q: &[f32], rot: usize) -> Vec<f32> {
    let mut r = q.to_vec();
    rotate(&mut r, rot);
    r
}

/// Rotate outputs of rotated values back.
pub(crate) fn unrotate(o: &mut [f32], rot: usize) {
    unrotate_rows(o, rot);
}

/// [`hearth_core::Backend::store_kv`] on host memory: row `t` of `src` into cache row
/// `rows[t]` of `dst`, rotated first when the type is.
pub(crate) fn store(
    src: &[f32],
    dst: &mut [f32],
    rows: &[usize],
    ty: KvType,
    rot: usize,
) -> Result<()> {
    let Some(w) = src.len().checked_div(rows.len()) else {
        return Ok(());
    };
    if w * rows.len() != src.len() || w % ty.block() != 0 || (ty.rotated() && w % rot != 0) {
        return Err(Error::Invalid(format!(
            "KV store: {} values in {} rows of {} blocks",
            src.len(),
            rows.len(),
            ty.name()
        )));
    }
    let rw = ty.row_words(w);
    let dst = bytes_mut(dst);
    let mut tmp = vec![0f32; w];
    for (t, &r) in rows.iter().enumerate() {
        let Some(d) = dst.get_mut(r * rw * 4..r * rw * 4 + ty.bytes(w)) else {
            return Err(Error::Invalid(format!(
                "KV store: row {r} lies outside the cache"
            )));
        };
        tmp.copy_from_slice(&src[t * w..(t + 1) * w]);
        if ty.rotated() {
            rotate(&mut tmp, rot);
        }
        quantize_row(ty, &tmp, d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use hearth_core::{AttnSeg, Backend, KvFormat, View, ViewMut};

    /// The f32 rows a cache of type `ty` holds: each row converted back and unrotated.
    fn values(ty: KvType, rot: usize, cache: &[f32], n_rows: usize, width: usize) -> Vec<f32> {
        let rw = ty.row_words(width);
        let mut out = vec![0f32; n_rows * width];
        for r in 0..n_rows {
            let o = &mut out[r * width..(r + 1) * width];
            dequantize_row(ty, &bytes(&cache[r * rw..])[..ty.bytes(width)], o).unwrap();
            if ty.rotated() {
                unrotate(o, rot);
            }
        }
        out
    }

    /// Attention over a cache in each type gives what attention over the f32 values that
    /// cache holds gives (the conversion runs chunk by chunk, the queries and outputs are
    /// rotated as the rows were): paged sequences, GQA heads and a latent-style cache whose
    /// values are the first columns of its key rows.
    #[test]
    fn typed_cache_attention_equals_attention_over_its_values() {
        let cpu = Cpu::new(2).unwrap();
        let mut seed = 5u64;
        let mut val = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % 2000) as f32 / 1000.0 - 1.0
        };
        let pairs = [
            (KvType::Q8_0, KvType::Q4_0),
            (KvType::Tq3, KvType::F16),
            (KvType::Iq4Nl, KvType::Q5_0),
            (KvType::Bf16, KvType::Tq3),
            (KvType::F32, KvType::Q8_0),
        ];
        // (heads, kv heads, key width, value width, latent: values inside the key rows)
        for (nh, nkv, hd, vd, latent) in [(6, 2, 64, 64, false), (4, 1, 96, 64, true)] {
            for (kt, vt) in pairs {
                let vt = if latent { kt } else { vt };
                let f = KvFormat::new(kt, vt, hd, vd).unwrap();
                let (page, n_pages) = (16, 6);
                let rows = page * n_pages;
                let (kw, vw) = (nkv * hd, if latent { 0 } else { nkv * vd });
                let (kr, vr) = (kt.row_words(kw), vt.row_words(vw));
                let ksrc: Vec<f32> = (0..rows * kw).map(|_| val()).collect();
                let vsrc: Vec<f32> = (0..rows * vw).map(|_| val()).collect();
                let all: Vec<usize> = (0..rows).collect();
                let mut kc = vec![0f32; rows * kr];
                let mut vc = vec![0f32; rows * vr];
                cpu.store_kv(View::Host(&ksrc), ViewMut::Host(&mut kc), &all, kt, f.rot)
                    .unwrap();
                if !latent {
                    cpu.store_kv(View::Host(&vsrc), ViewMut::Host(&mut vc), &all, vt, f.rot)
                        .unwrap();
                }
                let kref = values(kt, f.rot, &kc, rows, kw);
                let vref = if latent {
                    kref.clone()
                } else {
                    values(vt, f.rot, &vc, rows, vw)
                };
                // two sequences over scrambled pages: 3 tokens at 40..43, 1 token at 70
                let ta = [5u32, 2, 0];
                let tb = [1u32, 4, 3, 5, 2];
                let segs = [
                    AttnSeg {
                        row0: 0,
                        n_tok: 3,
                        pos0: 40,
                        pages: Some(Pages {
                            table: &ta,
                            page_size: page,
                        }),
                    },
                    AttnSeg {
                        row0: 3,
                        n_tok: 1,
                        pos0: 70,
                        pages: Some(Pages {
                            table: &tb,
                            page_size: page,
                        }),
                    },
                ];
                let q: Vec<f32> = (0..4 * nh * hd).map(|_| val()).collect();
                let mut p = AttnParams::gqa(nh, nkv, hd, 0.125);
                p.v_dim = vd;
                p.k_stride = kw;
                p.v_stride = if latent { kw } else { vw };
                let mut want = vec![0f32; 4 * nh * vd];
                let vview = if latent { &kref } else { &vref };
                cpu.attention_many(
                    View::Host(&kref),
                    View::Host(vview),
                    &p,
                    View::Host(&q),
                    ViewMut::Host(&mut want),
                    &segs,
                )
                .unwrap();
                p.kv = f;
                p.k_stride = kr;
                p.v_stride = if latent { kr } else { vr };
                let mut got = vec![0f32; 4 * nh * vd];
                let vbuf = if latent { &kc } else { &vc };
                cpu.attention_many(
                    View::Host(&kc),
                    View::Host(vbuf),
                    &p,
                    View::Host(&q),
                    ViewMut::Host(&mut got),
                    &segs,
                )
                .unwrap();
                let err = want
                    .iter()
                    .zip(&got)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err < 2e-5,
                    "{} / {}: max difference {err}",
                    kt.name(),
                    vt.name()
                );
                // a page table that points outside the cache is an error, not a panic
                let bad = [9u32];
                let mut s1 = segs[1];
                s1.pages = Some(Pages {
                    table: &bad,
                    page_size: page,
                });
                s1.pos0 = 3;
                s1.row0 = 0;
                let r = cpu.attention_many(
                    View::Host(&kc),
                    View::Host(vbuf),
                    &p,
                    View::Host(&q),
                    ViewMut::Host(&mut got),
                    &[s1],
                );
                assert!(r.is_err());
            }
        }
    }
}
