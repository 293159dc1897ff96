//! KV-cache types (`hearth_core::kv`): storing rows in each type, and attention over caches
//! of every type in the key and in the value position, against the CPU backend.
use super::{Suite, get, put, two_paged_seqs};
use hearth_core::kv::KV_TYPES;
use hearth_core::{AttnParams, AttnSeg, Backend, Error, KvFormat, KvType, Result};
use hearth_quant::kv::dequantize_row;

/// The cache rows `rows` of `words` (rows of `ty.row_words(width)`), decoded (still rotated).
fn decode(words: &[f32], rows: &[usize], ty: KvType, width: usize) -> Result<Vec<f32>> {
    let rw = ty.row_words(width);
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        let bytes: Vec<u8> = words[r * rw..(r + 1) * rw]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut v = vec![0f32; width];
        dequantize_row(ty, &bytes[..ty.bytes(width)], &mut v)?;
        out.extend(v);
    }
    Ok(out)
}

/// The largest error one code's rounding the other way may cause, over the largest value
/// (a device may round a division differently from the CPU; the 16-bit types are exact).
fn one_step(ty: KvType) -> f32 {
    match ty {
        KvType::F32 | KvType::F16 | KvType::Bf16 => 0.0,
        KvType::Q8_0 => 0.01,
        KvType::Q5_0 => 0.07,
        KvType::Q4_0 => 0.13,
        KvType::Iq4Nl => 0.2,
        KvType::Tq3 => 0.35,
    }
}

pub(crate) fn cases(s: &mut Suite) {
    for ty in KV_TYPES {
        // rows of 4 blocks, and of 3 (a row that ends in a block without its pair)
        for width in [128usize, 96] {
            let name = format!("store_kv {} 3 rows of {width} into 6", ty.name());
            s.case(name, one_step(ty), |s| {
                let rot = 32;
                let src = s.rng.vec(3 * width);
                let rows = [5usize, 0, 2];
                let rw = ty.row_words(width);
                let mut bd = put(s.be, &vec![0f32; 6 * rw])?;
                s.be.store_kv(put(s.be, &src)?.view(), bd.view_mut(), &rows, ty, rot)?;
                let mut cd = vec![0f32; 6 * rw];
                s.cpu
                    .store_kv((&src[..]).into(), (&mut cd[..]).into(), &rows, ty, rot)?;
                let (got, want) = (
                    decode(&get(s.be, &bd)?, &rows, ty, width)?,
                    decode(&cd, &rows, ty, width)?,
                );
                // nearly every value exactly as the CPU stores it
                let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                if differ * 50 > got.len() {
                    return Err(Error::Invalid(format!(
                        "{differ} of {} values stored unlike the CPU's",
                        got.len()
                    )));
                }
                Ok((got, want))
            });
        }
    }
    use KvType::*;
    for (kt, vt) in [
        (Q8_0, Tq3),
        (Q4_0, Q5_0),
        (Iq4Nl, F16),
        (Bf16, Q8_0),
        (Tq3, Iq4Nl),
        (F16, F32),
    ] {
        let label = format!(
            "attention {}/{} cache, 2 sequences, GQA 4/2 heads of 64, pages of 4",
            kt.name(),
            vt.name()
        );
        s.case(label, 1e-5, |s| {
            let (nh, nkv, hd, ps) = (4usize, 2usize, 64usize, 4usize);
            let rows = 8 * ps;
            let kv = KvFormat::new(kt, vt, hd, hd)?;
            let (kr, vr) = (kt.row_words(nkv * hd), vt.row_words(nkv * hd));
            // the caches as the CPU stores them, on both backends
            let all: Vec<usize> = (0..rows).collect();
            let (k, v) = (s.rng.vec(rows * nkv * hd), s.rng.vec(rows * nkv * hd));
            let (mut kc, mut vc) = (vec![0f32; rows * kr], vec![0f32; rows * vr]);
            s.cpu
                .store_kv((&k[..]).into(), (&mut kc[..]).into(), &all, kt, kv.rot)?;
            s.cpu
                .store_kv((&v[..]).into(), (&mut vc[..]).into(), &all, vt, kv.rot)?;
            let q = s.rng.vec(5 * nh * hd);
            let segs = two_paged_seqs(ps);
            let mut p = AttnParams::gqa(nh, nkv, hd, 1.0 / (hd as f32).sqrt());
            (p.kv, p.k_stride, p.v_stride) = (kv, kr, vr);
            attend(s, &kc, &vc, false, &p, &q, &segs)
        });
    }
    // latent attention's one cache: keys are whole rows of 96, values their first 64
    s.case(
        "attention q8_0 latent cache (keys 96, values 64 of the same rows)".into(),
        1e-5,
        |s| {
            let (nh, row, vd) = (3usize, 96usize, 64usize);
            let kv = KvFormat::new(Q8_0, Q8_0, row, vd)?;
            let rw = Q8_0.row_words(row);
            let rows: Vec<usize> = (0..12).collect();
            let c = s.rng.vec(rows.len() * row);
            let mut cc = vec![0f32; rows.len() * rw];
            s.cpu
                .store_kv((&c[..]).into(), (&mut cc[..]).into(), &rows, Q8_0, kv.rot)?;
            let q = s.rng.vec(2 * nh * row);
            let segs = [AttnSeg {
                row0: 0,
                n_tok: 2,
                pos0: 10,
                pages: None,
            }];
            let mut p = AttnParams::gqa(nh, 1, row, 0.1);
            (p.kv, p.v_dim, p.k_stride, p.v_stride) = (kv, vd, rw, rw);
            attend(s, &cc, &cc, true, &p, &q, &segs)
        },
    );
}

/// Attention over caches `k` and `v` (the same buffer when `shared`) on both backends.
fn attend(
    s: &mut Suite,
    k: &[f32],
    v: &[f32],
    shared: bool,
    p: &AttnParams<'_>,
    q: &[f32],
    segs: &[AttnSeg<'_>],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let n_tok: usize = segs.iter().map(|s| s.n_tok).sum();
    let n_out = n_tok * p.n_head * p.v_dim;
    let (bk, bv) = (put(s.be, k)?, put(s.be, v)?);
    let bv = if shared { &bk } else { &bv };
    let mut out = s.be.alloc(n_out)?;
    s.be.attention_many(
        bk.view(),
        bv.view(),
        p,
        put(s.be, q)?.view(),
        out.view_mut(),
        segs,
    )?;
    let mut want = vec![0f32; n_out];
    s.cpu.attention_many(
        k.into(),
        v.into(),
        p,
        q.into(),
        (&mut want[..]).into(),
        segs,
    )?;
    Ok((get(s.be, &out)?, want))
}
