//! Quantizers for the lattice i-quants below 4 bits: IQ2_XXS and IQ2_XS (8-value grid points,
//! 8- or 9-bit index + 7 sign bits per 8) and IQ3_XXS (4-value grid points, 8-bit index).
//!
//! These follow llama.cpp's `quantize_row_iq2_xs_impl` / `quantize_row_iq3_xxs_impl`: per
//! group of 8 values the signs are split off (with an even number of minus signs, flipping the
//! least important value when needed), the magnitudes are rounded onto the lattice at a range
//! of candidate scales, points that fall off the grid are moved to the best of their nearest
//! grid neighbours, and the scale with the best weighted fit wins. The arithmetic is f32 in
//! ggml's order so that the bytes match `llama-quantize`; the code is written anew.
//!
//! A lattice point is kept in ggml's "odd" coordinates `2l + 1` (l = the level index), so that
//! distances between points are small integers; the dequantization tables hold the same points
//! scaled to their real magnitudes.
// The loops index several arrays in step, as the formulas read.
#![allow(clippy::needless_range_loop)]
use crate::qlegacy::f16_bytes;
use crate::qsearch::{GROUP_MAX_EPS, make_qp, nearest_int};
use crate::tables::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use std::sync::OnceLock;

/// IQ3_XXS treats groups smaller than this as zero (ggml's `GROUP_MAX_EPS_IQ3_XXS`).
const GROUP_MAX_EPS_IQ3: f32 = 1e-8;
/// IQ2_S's (ggml's `GROUP_MAX_EPS_IQ2_S`).
const GROUP_MAX_EPS_IQ2_S: f32 = 1e-8;

/// The map entry of a level vector that is neither a grid point nor has neighbours.
const NO_NEIGHBOURS: i32 = i32::MIN;

/// A grid (codebook) of lattice points with the lookup tables the quantizer needs: the map from
/// every packed level vector to its grid index, and for points that are not on the grid the
/// list of grid points nearest to them.
pub struct Lattice {
    /// values per point (8 or 4)
    pub dim: usize,
    /// bits per level in a packed level vector (2 or 3)
    pub bits: usize,
    /// grid points in odd coordinates, `dim` per point
    pub points: Vec<i8>,
    /// packed level vector -> grid index (>= 0), or `-(offset + 1)` into `neighbours`, or
    /// `NO_NEIGHBOURS` for a vector rounding cannot produce
    pub map: Vec<i32>,
    /// for each off-grid vector: the count n, then n grid indices (nearest first, by index on ties)
    pub neighbours: Vec<u16>,
}

impl Lattice {
    /// Build from a dequantization grid whose coordinates take the sorted `levels` values,
    /// keeping neighbours up to the `nwant`-th distinct distance, for level vectors `0..map_size`.
    /// As in ggml's `iq2xs_init_impl` / `iq3xs_init_impl`, a neighbour list holds every grid
    /// point whose squared distance is among the `nwant` smallest distinct ones, sorted by
    /// distance, then index. Vectors with a level outside `levels` cannot come out of rounding
    /// (the quantizers clamp) and get no list.
    fn new<T: Copy + PartialEq, const D: usize>(
        grid: &[[T; D]],
        levels: &[T],
        bits: usize,
        nwant: usize,
        map_size: usize,
    ) -> Self {
        let mut points = Vec::with_capacity(grid.len() * D);
        let mut map = vec![NO_NEIGHBOURS; map_size];
        for (gi, g) in grid.iter().enumerate() {
            let mut u = 0usize;
            for (k, v) in g.iter().enumerate() {
                let l = levels
                    .iter()
                    .position(|x| x == v)
                    .expect("grid value is a level");
                points.push(2 * l as i8 + 1);
                u |= l << (bits * k);
            }
            map[u] = gi as i32;
        }
        let mask = (1usize << bits) - 1;
        let mut neighbours = Vec::new();
        let mut dist: Vec<u32> = vec![0; grid.len()];
        let mut near: Vec<u32> = Vec::new();
        for u in 0..map_size {
            if map[u] >= 0 || (0..D).any(|k| (u >> (bits * k)) & mask >= levels.len()) {
                continue;
            }
            let pos: [i32; D] = std::array::from_fn(|k| 2 * ((u >> (bits * k)) & mask) as i32 + 1);
            // the nwant smallest distinct distances, ascending
            let mut smallest = [u32::MAX; 4];
            for (j, d) in dist.iter_mut().enumerate() {
                let p = &points[D * j..D * j + D];
                let d2: i32 = (0..D).map(|k| (p[k] as i32 - pos[k]).pow(2)).sum();
                *d = d2 as u32;
                let s = &mut smallest[..nwant];
                if let Some(at) = s.iter().position(|&v| *d <= v)
                    && s[at] != *d
                {
                    s[at..].rotate_right(1);
                    s[at] = *d;
                }
            }
            let limit = smallest[..nwant]
                .iter()
                .rev()
                .find(|&&v| v != u32::MAX)
                .copied()
                .unwrap_or(0);
            near.clear();
            near.extend(
                dist.iter()
                    .enumerate()
                    .filter(|&(_, &d)| d <= limit)
                    .map(|(j, &d)| (d << 16) | j as u32),
            );
            near.sort_unstable();
            map[u] = -(neighbours.len() as i32 + 1);
            neighbours.push(near.len() as u16);
            neighbours.extend(near.iter().map(|e| (e & 0xffff) as u16));
        }
        Lattice {
            dim: D,
            bits,
            points,
            map,
            neighbours,
        }
    }

    /// Grid points in all.
    pub fn len(&self) -> usize {
        self.points.len() / self.dim
    }

    /// Whether the grid is empty (never, for the built-in grids).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The grid point in odd coordinates.
    pub fn point(&self, i: usize) -> &[i8] {
        &self.points[self.dim * i..self.dim * (i + 1)]
    }

    /// The nearest grid points of an off-grid packed level vector (empty for one on the grid).
    pub fn neighbours_of(&self, u: usize) -> &[u16] {
        let m = self.map[u];
        if m >= 0 || m == NO_NEIGHBOURS {
            return &[];
        }
        let o = (-m - 1) as usize;
        let n = self.neighbours[o] as usize;
        &self.neighbours[o + 1..o + 1 + n]
    }

    /// Pack levels `l` (one per coordinate) into a level vector.
    fn pack(&self, l: &[i8]) -> usize {
        l.iter()
            .enumerate()
            .fold(0, |u, (k, &v)| u | ((v as usize) << (self.bits * k)))
    }

    /// Round `xval / scale` (odd coordinates) onto the levels `0..nlev`, and onto the grid:
    /// returns the grid index and whether the rounded point was on the grid; `l` gets the levels.
    fn snap(
        &self,
        xval: &[f32],
        waux: &[f32],
        id: f32,
        scale: f32,
        nlev: i32,
        l: &mut [i8],
    ) -> (usize, bool) {
        for i in 0..self.dim {
            l[i] = nearest_int(0.5 * (id * xval[i] - 1.0)).clamp(0, nlev - 1) as i8;
        }
        let u = self.pack(l);
        let m = self.map[u];
        if m >= 0 {
            return (m as usize, true);
        }
        let gi = self.best_neighbour(u, xval, waux, scale);
        for (i, &p) in self.point(gi).iter().enumerate() {
            l[i] = (p - 1) / 2;
        }
        (gi, false)
    }

    /// Of the neighbours of off-grid vector `u`, the one nearest to `xval` at `scale`, by the
    /// error weighted with `w` (the first one on ties, and when the errors are not numbers).
    fn best_neighbour(&self, u: usize, xval: &[f32], w: &[f32], scale: f32) -> usize {
        let nb = self.neighbours_of(u);
        let mut best = f32::MAX;
        let mut gi = nb[0] as usize;
        for &j in nb {
            let p = self.point(j as usize);
            let mut d2 = 0f32;
            for i in 0..self.dim {
                let diff = scale * p[i] as f32 - xval[i];
                d2 += w[i] * diff * diff;
            }
            if d2 < best {
                best = d2;
                gi = j as usize;
            }
        }
        gi
    }
}

/// IQ2_XXS's lattice: 256 points of 8 values on 3 levels.
pub fn iq2xxs_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(&IQ2XXS_GRID, &[8, 25, 43], 2, 2, 43692))
}

/// IQ2_XS's lattice: 512 points of 8 values on 3 levels.
pub fn iq2xs_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(&IQ2XS_GRID, &[8, 25, 43], 2, 2, 43692))
}

/// IQ3_XXS's lattice: 256 points of 4 values on 8 levels.
pub fn iq3xxs_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(&IQ3XXS_GRID, &[4, 12, 20, 28, 36, 44, 52, 62], 3, 2, 4096))
}

/// IQ2_S's lattice: 1024 points of 8 values on 3 levels; one distance of neighbours, as in
/// ggml's `iq2xs_init_impl`.
pub fn iq2s_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(&IQ2S_GRID, &[8, 25, 43], 2, 1, 43692))
}

/// IQ3_S's lattice: 512 points of 4 values on 8 levels, three distances of neighbours (ggml's
/// `iq3xs_init_impl` with grid size 512).
pub fn iq3s_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(&IQ3S_GRID, &[1, 3, 5, 7, 9, 11, 13, 15], 3, 3, 4096))
}

/// IQ1_S's and IQ1_M's lattice: 2048 points of 8 values on the 3 levels -1, 0, 1, three
/// distances of neighbours (ggml's `iq2xs_init_impl` for IQ1_S / IQ1_M).
pub fn iq1s_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(&IQ1S_GRID, &[-1, 0, 1], 2, 3, 43692))
}

/// Split the signs off 8 values: `xval` gets the magnitudes, the result the 7 stored sign
/// bits. The 8th sign is implied by even parity, so with an odd count of negatives the value
/// with the least weighted square `w x^2` keeps a wrong sign (its `xval` turns negative).
fn split_signs(xb: &[f32], w: &[f32], xval: &mut [f32]) -> u8 {
    let mut s = 0u8;
    for i in 0..8 {
        if xb[i] >= 0.0 {
            xval[i] = xb[i];
        } else {
            xval[i] = -xb[i];
            s |= 1 << i;
        }
    }
    if s.count_ones() % 2 == 1 {
        let mut imin = 0;
        let mut min = w[0] * xb[0] * xb[0];
        for i in 1..8 {
            let a = w[i] * xb[i] * xb[i];
            if a < min {
                min = a;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= 1 << imin;
    }
    s & 127
}

/// Which points a group rounds again at its best scale, after the search.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Again {
    /// those that fell off the grid at the best candidate (IQ2_XS, IQ2_S, IQ3_XXS)
    OffGrid,
    /// all of them, whenever one fell off the grid (IQ3_S, whose search also counts the points
    /// as off the grid when no candidate fits)
    AllIfOffGrid,
    /// all of them, always (IQ2_XXS)
    All,
}

/// How a group's scale is searched.
struct Search {
    /// levels per coordinate
    nlev: i32,
    /// candidate inverse scales `(2 nlev - 1 + step * is) / top` for `is` in `-nsteps..=nsteps`
    nsteps: i32,
    step: f32,
    again: Again,
}

/// One group's search (16 values of IQ2_XS and IQ2_S, 32 of IQ2_XXS, IQ3_XXS and IQ3_S): fill
/// `idx` with a grid index per `lat.dim` values and return the group's scale (>= 0; the signs,
/// `sign_bits` of each byte, are flipped when the best fit is negative). `top` is the magnitude
/// the candidate scales are relative to (the group's max, above its epsilon), `scale` the scale
/// kept when no candidate fits.
#[allow(clippy::too_many_arguments)]
fn search_group(
    lat: &Lattice,
    xval: &[f32],
    weight: &[f32],
    o: &Search,
    top: f32,
    mut scale: f32,
    idx: &mut [usize],
    signs: &mut [u8],
    sign_bits: u8,
) -> f32 {
    let n = xval.len();
    let dim = lat.dim;
    let ng = n / dim;
    let mut waux = [0f32; 32];
    for i in 0..n {
        waux[i] = weight[i].sqrt();
    }
    let fit = |l: &[i8]| {
        let (mut sqx, mut sq2) = (0f32, 0f32);
        for i in 0..n {
            let q = (2 * l[i] as i32 + 1) as f32;
            sqx += weight[i] * xval[i] * q;
            sq2 += weight[i] * q * q;
        }
        (sqx, sq2)
    };
    let (mut l, mut laux) = ([0i8; 32], [0i8; 32]);
    let start_on = o.again != Again::AllIfOffGrid;
    let (mut on, mut on_aux) = ([start_on; 8], [true; 8]);
    let mut iaux = [0usize; 8];
    idx[..ng].fill(lat.map[0] as usize);
    let nlev = o.nlev;
    let mut best = 0f32;
    for is in -o.nsteps..=o.nsteps {
        let id = ((2 * nlev - 1) as f32 + is as f32 * o.step) / top;
        let this_scale = 1.0 / id;
        for k in 0..ng {
            let r = dim * k..dim * k + dim;
            let (gi, ok) = lat.snap(
                &xval[r.clone()],
                &waux[r.clone()],
                id,
                this_scale,
                nlev,
                &mut laux[r],
            );
            iaux[k] = gi;
            on_aux[k] = ok;
        }
        let (sqx, sq2) = fit(&laux);
        if sq2 > 0.0 && sqx * sqx > best * sq2 {
            scale = sqx / sq2;
            best = scale * sqx;
            l = laux;
            on = on_aux;
            idx[..ng].copy_from_slice(&iaux[..ng]);
        }
    }
    if (o.again == Again::All || on[..ng].iter().any(|&o| !o)) && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..ng {
            if on[k] && o.again == Again::OffGrid {
                continue;
            }
            let r = dim * k..dim * k + dim;
            idx[k] = lat
                .snap(
                    &xval[r.clone()],
                    &waux[r.clone()],
                    id,
                    scale,
                    nlev,
                    &mut l[r],
                )
                .0;
        }
        let (sqx, sq2) = fit(&l);
        if sq2 > 0.0 {
            scale = sqx / sq2;
        }
    }
    if scale < 0.0 {
        scale = -scale;
        for s in signs.iter_mut() {
            *s = !*s & sign_bits;
        }
    }
    scale
}

/// The importance weights of one group: `qw * sqrt(sigma2 + x^2)`, or `x^2` without `qw`.
fn group_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32, w: &mut [f32]) {
    for i in 0..xb.len() {
        w[i] = match qw {
            Some(q) => q[i] * (sigma2 + xb[i] * xb[i]).sqrt(),
            None => xb[i] * xb[i],
        };
    }
}

/// The largest value, as ggml's `MAX` loop picks it.
fn vmax(x: &[f32]) -> f32 {
    x.iter().fold(x[0], |m, &v| if m > v { m } else { v })
}

fn sum_squares(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |s, v| s + v * v)
}

/// The two 2-bit formats with parity signs (7 stored bits per 8 values).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parity2 {
    /// IQ2_XXS: groups of 32, 256-point grid
    Xxs,
    /// IQ2_XS: groups of 16, 512-point grid
    Xs,
}

fn or_u32(b: &mut [u8], at: usize, v: u32) {
    let old = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    b[at..at + 4].copy_from_slice(&(old | v).to_le_bytes());
}

/// IQ2_XXS and IQ2_XS (ggml's `quantize_row_iq2_xxs_impl` / `quantize_row_iq2_xs_impl`): the
/// same per-group steps (weights, parity signs, grid search) and super-block scale, with the
/// variant's group size, search and packing. `qw` is required, as in ggml.
fn iq2_parity(x: &[f32], qw: &[f32], out: &mut [u8], v: Parity2) {
    let (lat, g, bytes) = match v {
        Parity2::Xxs => (iq2xxs_lattice(), 32, 66),
        Parity2::Xs => (iq2xs_lattice(), 16, 74),
    };
    let ng = 256 / g;
    let (mut w, mut xval) = ([0f32; 32], [0f32; 32]);
    let mut scales = [0f32; 16];
    let mut lq = [0u8; 32];
    for (ibl, (xs, y)) in x
        .chunks_exact(256)
        .zip(out.chunks_exact_mut(bytes))
        .enumerate()
    {
        y.fill(0);
        // everything after d; written only when the block is not all zero
        let mut body = [0u8; 72];
        let sigma2 = sum_squares(xs) / 256.0;
        let mut max_scale = 0f32;
        for ib in 0..ng {
            let xb = &xs[g * ib..g * ib + g];
            let q = &qw[256 * ibl + g * ib..256 * ibl + g * ib + g];
            let (w, xval) = (&mut w[..g], &mut xval[..g]);
            group_weights(xb, Some(q), sigma2, w);
            let mut signs = [0u8; 4];
            for k in 0..g / 8 {
                let r = 8 * k..8 * k + 8;
                signs[k] = split_signs(&xb[r.clone()], &w[r.clone()], &mut xval[r]);
            }
            scales[ib] = 0.0;
            let max = vmax(xval);
            if max < GROUP_MAX_EPS {
                continue;
            }
            // IQ2_XXS starts from the scale make_qp fits to the magnitudes on 4 levels and
            // rounds every point again at the end; IQ2_XS from the max.
            let (top, scale0, o) = match v {
                Parity2::Xxs => {
                    let scale0 = make_qp(xval, 4, &mut lq, w);
                    let eff_max = scale0 * 3.0;
                    if eff_max <= 0.0 || eff_max.is_nan() {
                        continue;
                    }
                    let o = Search {
                        nlev: 3,
                        nsteps: 6,
                        step: 0.1,
                        again: Again::All,
                    };
                    (eff_max, scale0, o)
                }
                Parity2::Xs => {
                    let o = Search {
                        nlev: 3,
                        nsteps: 9,
                        step: 0.1,
                        again: Again::OffGrid,
                    };
                    (max, max / 5.0, o)
                }
            };
            let mut idx = [0usize; 4];
            let scale = search_group(lat, xval, w, &o, top, scale0, &mut idx, &mut signs, 127);
            for k in 0..g / 8 {
                match v {
                    // per group a u32 of 4 indices, a u32 of 4 x 7 sign bits (scale on top)
                    Parity2::Xxs => {
                        or_u32(&mut body, 8 * ib, (idx[k] as u32) << (8 * k));
                        or_u32(&mut body, 8 * ib + 4, (signs[k] as u32) << (7 * k));
                    }
                    // per 8 values a u16 of index | signs << 9
                    Parity2::Xs => {
                        let e = idx[k] as u16 | ((signs[k] as u16) << 9);
                        let at = 2 * (2 * ib + k);
                        body[at..at + 2].copy_from_slice(&e.to_le_bytes());
                    }
                }
            }
            scales[ib] = scale;
            max_scale = max_scale.max(scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        y[..2].copy_from_slice(&f16_bytes(d));
        let id = 1.0 / d;
        for ib in 0..ng {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u32;
            match v {
                Parity2::Xxs => or_u32(&mut body, 8 * ib + 4, l << 28),
                Parity2::Xs => body[64 + ib / 2] |= (l as u8) << (4 * (ib % 2)),
            }
        }
        y[2..].copy_from_slice(&body[..bytes - 2]);
    }
}

/// IQ2_XXS: 66 bytes per 256 (f16 d, then per 32 values a u32 of 4 grid indices and a u32 of
/// scale << 28 | 4 x 7 sign bits). `qw` is required, as in ggml.
pub fn iq2_xxs(x: &[f32], qw: &[f32], out: &mut [u8]) {
    iq2_parity(x, qw, out, Parity2::Xxs);
}

/// IQ2_XS: 74 bytes per 256 (f16 d, 32 u16 of grid index | signs << 9, 16 4-bit scales).
/// `qw` (one importance weight per value) is required, as in ggml.
pub fn iq2_xs(x: &[f32], qw: &[f32], out: &mut [u8]) {
    iq2_parity(x, qw, out, Parity2::Xs);
}

/// IQ3_XXS: 98 bytes per 256 (f16 d, 64 grid indices, 8 u32 of scale << 28 | 4 x 7 sign bits).
/// Without `qw` the weights are x^2, as in ggml.
pub fn iq3_xxs(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = iq3xxs_lattice();
    let (mut w, mut xval) = ([0f32; 32], [0f32; 32]);
    let mut scales = [0f32; 8];
    let mut q3 = [0u8; 64];
    let mut sas = [0u32; 8];
    for (ibl, (xs, y)) in x
        .chunks_exact(256)
        .zip(out.chunks_exact_mut(98))
        .enumerate()
    {
        y.fill(0);
        q3.fill(0);
        sas.fill(0);
        let sigma2 = 2.0 * sum_squares(xs) / 256.0;
        let mut max_scale = 0f32;
        for ib in 0..8 {
            let xb = &xs[32 * ib..32 * ib + 32];
            let q = qw.map(|q| &q[256 * ibl + 32 * ib..256 * ibl + 32 * ib + 32]);
            group_weights(xb, q, sigma2, &mut w);
            let mut signs = [0u8; 4];
            for k in 0..4 {
                let r = 8 * k..8 * k + 8;
                signs[k] = split_signs(&xb[r.clone()], &w[r.clone()], &mut xval[r]);
            }
            let max = vmax(&xval);
            if max < GROUP_MAX_EPS_IQ3 {
                scales[ib] = 0.0;
                continue;
            }
            let mut idx = [0usize; 8];
            let o = Search {
                nlev: 8,
                nsteps: 15,
                step: 0.2,
                again: Again::OffGrid,
            };
            let scale = search_group(
                lat,
                &xval,
                &w,
                &o,
                max,
                max / 15.0,
                &mut idx,
                &mut signs,
                127,
            );
            for k in 0..8 {
                q3[8 * ib + k] = idx[k] as u8;
            }
            sas[ib] = signs[0] as u32
                | (signs[1] as u32) << 7
                | (signs[2] as u32) << 14
                | (signs[3] as u32) << 21;
            scales[ib] = scale;
            max_scale = max_scale.max(scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        y[..2].copy_from_slice(&f16_bytes(d * 1.0125));
        let id = 1.0 / d;
        for ib in 0..8 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u32;
            sas[ib] |= l << 28;
        }
        y[2..66].copy_from_slice(&q3);
        for (o, v) in y[66..98].chunks_exact_mut(4).zip(&sas) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Split the signs of a group off as they are (IQ2_S, IQ3_S: one stored bit per value, no
/// parity): `xval` gets the magnitudes, the result one sign byte per 8 values.
fn plain_signs(xb: &[f32], xval: &mut [f32], signs: &mut [u8]) {
    for (k, s) in signs.iter_mut().enumerate() {
        *s = 0;
        for i in 0..8 {
            let v = xb[8 * k + i];
            if v >= 0.0 {
                xval[8 * k + i] = v;
            } else {
                xval[8 * k + i] = -v;
                *s |= 1 << i;
            }
        }
    }
}

/// IQ2_S: 82 bytes per 256 (f16 d, 32 low index bytes, 32 sign bytes, 8 bytes of 2 high index
/// bits, 8 bytes of 4-bit scales per 16). ggml's `quantize_row_iq2_s_impl`: IQ2_XS's search on
/// the 1024-point grid with explicit signs; without `qw` the weights are `sigma2 / 4 + x^2`.
pub fn iq2_s(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = iq2s_lattice();
    let (mut w, mut xval) = ([0f32; 16], [0f32; 16]);
    let mut scales = [0f32; 16];
    for (ibl, (xs, y)) in x
        .chunks_exact(256)
        .zip(out.chunks_exact_mut(82))
        .enumerate()
    {
        y.fill(0);
        let sigma2 = 2.0 * sum_squares(xs) / 256.0;
        let mut max_scale = 0f32;
        for ib in 0..16 {
            let xb = &xs[16 * ib..16 * ib + 16];
            match qw {
                Some(q) => group_weights(xb, Some(&q[256 * ibl + 16 * ib..]), sigma2, &mut w),
                None => {
                    for i in 0..16 {
                        w[i] = 0.25 * sigma2 + xb[i] * xb[i];
                    }
                }
            }
            let mut signs = [0u8; 2];
            plain_signs(xb, &mut xval, &mut signs);
            let max = vmax(&xval);
            if max < GROUP_MAX_EPS_IQ2_S {
                scales[ib] = 0.0;
                continue;
            }
            let mut idx = [0usize; 2];
            let o = Search {
                nlev: 3,
                nsteps: 9,
                step: 0.1,
                again: Again::OffGrid,
            };
            let scale = search_group(
                lat,
                &xval,
                &w,
                &o,
                max,
                max / 5.0,
                &mut idx,
                &mut signs,
                255,
            );
            for k in 0..2 {
                let i8 = 2 * ib + k;
                y[2 + i8] = idx[k] as u8;
                y[66 + i8 / 4] |= ((idx[k] >> 8) << (2 * (i8 % 4))) as u8;
                y[34 + i8] = signs[k];
            }
            scales[ib] = scale;
            max_scale = max_scale.max(scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        y[..2].copy_from_slice(&f16_bytes(d * 0.9875));
        let id = 1.0 / d;
        for ib in 0..16 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u8;
            y[74 + ib / 2] |= l << (4 * (ib % 2));
        }
    }
}

/// IQ3_S: 110 bytes per 256 (f16 d, 64 low index bytes, 8 bytes of ninth index bits, 32 sign
/// bytes, 4 bytes of 4-bit scales per 32). ggml's `quantize_row_iq3_s_impl` with its block size
/// of 32: IQ3_XXS's search on the 512-point grid with explicit signs. Without `qw` the weights
/// are x^2.
pub fn iq3_s(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = iq3s_lattice();
    let (mut w, mut xval) = ([0f32; 32], [0f32; 32]);
    let mut scales = [0f32; 8];
    for (ibl, (xs, y)) in x
        .chunks_exact(256)
        .zip(out.chunks_exact_mut(110))
        .enumerate()
    {
        y.fill(0);
        let sigma2 = 2.0 * sum_squares(xs) / 256.0;
        let mut max_scale = 0f32;
        // ggml advances its index and sign pointers only past groups it quantizes: after an
        // all-zero group, the next group's indices and signs land in its place (the ninth bits
        // and scales are placed by group). Kept, so that the bytes are llama.cpp's.
        let mut slot = 0;
        for ib in 0..8 {
            let xb = &xs[32 * ib..32 * ib + 32];
            let q = qw.map(|q| &q[256 * ibl + 32 * ib..256 * ibl + 32 * ib + 32]);
            group_weights(xb, q, sigma2, &mut w);
            let mut signs = [0u8; 4];
            plain_signs(xb, &mut xval, &mut signs);
            let max = vmax(&xval);
            // ggml tests `!max`: only an exactly zero group is skipped
            if max == 0.0 {
                scales[ib] = 0.0;
                continue;
            }
            let mut idx = [0usize; 8];
            let o = Search {
                nlev: 8,
                nsteps: 9,
                step: 0.2,
                again: Again::AllIfOffGrid,
            };
            let scale = search_group(
                lat,
                &xval,
                &w,
                &o,
                max,
                max / 15.0,
                &mut idx,
                &mut signs,
                255,
            );
            for k in 0..8 {
                y[2 + 8 * slot + k] = idx[k] as u8;
                y[66 + ib] |= ((idx[k] >> 8) << k) as u8;
            }
            y[74 + 4 * slot..78 + 4 * slot].copy_from_slice(&signs);
            slot += 1;
            scales[ib] = scale;
            max_scale = max_scale.max(scale);
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        y[..2].copy_from_slice(&f16_bytes(d * 1.033));
        let id = 1.0 / d;
        for ib in 0..8 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u8;
            y[106 + ib / 2] |= l << (4 * (ib % 2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every grid point maps to itself; every other level vector (of levels below `nlev`) has
    /// the neighbour list ggml's init builds, recomputed here by brute force: all grid points
    /// whose squared distance is among the `nwant` smallest distinct ones, by distance then
    /// index.
    fn check(lat: &Lattice, map_size: usize, nlev: usize, nwant: usize) {
        for gi in 0..lat.len() {
            let l: Vec<i8> = lat.point(gi).iter().map(|p| (p - 1) / 2).collect();
            assert_eq!(lat.map[lat.pack(&l)], gi as i32);
        }
        let dist = |u: usize, gi: usize| -> i32 {
            let p = lat.point(gi);
            (0..lat.dim)
                .map(|k| {
                    let l = ((u >> (lat.bits * k)) & ((1 << lat.bits) - 1)) as i32;
                    (p[k] as i32 - (2 * l + 1)).pow(2)
                })
                .sum()
        };
        let mut off = 0;
        for u in 0..map_size {
            if (0..lat.dim).any(|k| (u >> (lat.bits * k)) & ((1 << lat.bits) - 1) >= nlev) {
                continue;
            }
            if lat.map[u] >= 0 {
                assert!((lat.map[u] as usize) < lat.len());
                continue;
            }
            off += 1;
            let mut all: Vec<(i32, usize)> = (0..lat.len()).map(|j| (dist(u, j), j)).collect();
            all.sort();
            let mut distinct: Vec<i32> = all.iter().map(|e| e.0).collect();
            distinct.dedup();
            let limit = distinct[nwant.min(distinct.len()) - 1];
            let want: Vec<u16> = all
                .iter()
                .filter(|e| e.0 <= limit)
                .map(|e| e.1 as u16)
                .collect();
            assert_eq!(lat.neighbours_of(u), &want[..], "vector {u}");
        }
        assert!(off > 0);
    }

    #[test]
    fn iq2xxs_lattice_tables() {
        let lat = iq2xxs_lattice();
        assert_eq!(lat.len(), 256);
        check(lat, 43692, 3, 2);
    }

    #[test]
    fn iq2xs_lattice_tables() {
        let lat = iq2xs_lattice();
        assert_eq!(lat.len(), 512);
        check(lat, 43692, 3, 2);
    }

    #[test]
    fn iq2s_lattice_tables() {
        let lat = iq2s_lattice();
        assert_eq!(lat.len(), 1024);
        check(lat, 43692, 3, 1);
    }

    #[test]
    fn iq3xxs_lattice_tables() {
        let lat = iq3xxs_lattice();
        assert_eq!(lat.len(), 256);
        check(lat, 4096, 8, 2);
    }

    #[test]
    fn iq3s_lattice_tables() {
        let lat = iq3s_lattice();
        assert_eq!(lat.len(), 512);
        check(lat, 4096, 8, 3);
    }

    #[test]
    fn iq1s_lattice_tables() {
        let lat = iq1s_lattice();
        assert_eq!(lat.len(), 2048);
        check(lat, 43692, 3, 3);
    }

    /// The stored signs have even parity with the flipped magnitude: sign(x) * xval
    /// reproduces x except at most one value, the least important one.
    #[test]
    fn signs_keep_even_parity() {
        let w = [1.0; 8];
        let mut xval = [0f32; 8];
        // four negatives (1, 3, 5, 6): all stored, nothing flipped
        let xb = [0.5, -1.0, 2.0, -0.1, 0.3, -0.7, -0.9, 1.1];
        let s = split_signs(&xb, &w, &mut xval);
        assert_eq!(s, 0b0110_1010);
        assert!(xval.iter().all(|&v| v >= 0.0));
        // three negatives (1, 3, 6): the least important one (-0.1) keeps a wrong sign
        let xb = [0.5, -1.0, 2.0, -0.1, 0.3, 0.7, -0.9, 1.1];
        let s = split_signs(&xb, &w, &mut xval);
        assert_eq!(s, 0b0100_0010);
        assert_eq!(xval[3], -0.1);
        // the same with a weight that makes 0.3 the least important: its sign flips instead
        let mut w2 = w;
        w2[4] = 0.01;
        let s = split_signs(&xb, &w2, &mut xval);
        assert_eq!(s, 0b0101_1010);
        assert_eq!(xval[4], -0.3);
        assert_eq!(xval[3], 0.1);
    }

    /// Every grid index the quantizers write is in range of its grid, and the groups the
    /// search leaves off-grid are moved onto it: the decoded level vector of every index is a
    /// grid point (the map sends it back to the same index), on varied data and weights.
    #[test]
    fn written_grid_indices_are_valid() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        let x: Vec<f32> = (0..256 * 8)
            .map(|_| (next() - 0.5) * (next() * 4.0).exp())
            .collect();
        let w: Vec<f32> = (0..256 * 8).map(|_| next() * next() * 10.0).collect();
        let (l2, l3) = (iq2xs_lattice(), iq3xxs_lattice());
        let mut o2 = vec![0u8; 74 * 8];
        iq2_xs(&x, &w, &mut o2);
        let l1 = iq2xxs_lattice();
        let mut o1 = vec![0u8; 66 * 8];
        iq2_xxs(&x, &w, &mut o1);
        let mut seen = std::collections::HashSet::new();
        for b in o1.chunks_exact(66) {
            for g in 0..8 {
                for &gi in &b[2 + 8 * g..6 + 8 * g] {
                    let gi = gi as usize;
                    assert!(gi < l1.len());
                    let lv: Vec<i8> = l1.point(gi).iter().map(|p| (p - 1) / 2).collect();
                    assert_eq!(l1.map[l1.pack(&lv)], gi as i32);
                    seen.insert(gi);
                }
            }
        }
        assert!(
            seen.len() > 20,
            "only {} distinct IQ2_XXS points",
            seen.len()
        );
        let mut o3 = vec![0u8; 98 * 8];
        iq3_xxs(&x, Some(&w), &mut o3);
        seen.clear();
        for b in o2.chunks_exact(74) {
            for g in 0..32 {
                let gi = (u16::from_le_bytes([b[2 + 2 * g], b[3 + 2 * g]]) & 511) as usize;
                assert!(gi < l2.len());
                let lv: Vec<i8> = l2.point(gi).iter().map(|p| (p - 1) / 2).collect();
                assert_eq!(l2.map[l2.pack(&lv)], gi as i32);
                seen.insert(gi);
            }
        }
        assert!(
            seen.len() > 20,
            "only {} distinct IQ2_XS points",
            seen.len()
        );
        seen.clear();
        for b in o3.chunks_exact(98) {
            for &gi in &b[2..66] {
                let gi = gi as usize;
                assert!(gi < l3.len());
                let lv: Vec<i8> = l3.point(gi).iter().map(|p| (p - 1) / 2).collect();
                assert_eq!(l3.map[l3.pack(&lv)], gi as i32);
                seen.insert(gi);
            }
        }
        assert!(
            seen.len() > 20,
            "only {} distinct IQ3_XXS points",
            seen.len()
        );
    }
}
