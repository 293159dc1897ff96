// out[t, r] = dot(W[r, :], x[t, :]) with cooperative matrices (coop_core.glsl): a workgroup
// per block of 16 rows and 16 tokens.
#include "common.glsl"
#include "matmul_io.glsl"
#include "coop_core.glsl"

void main() {
    uint g = flat_group();
    uint nrb = (p.n_out + T - 1u) / T;
    uint r0 = (g % nrb) * T;
    uint t0 = (g / nrb) * T;
    if (t0 >= p.n_tok) return;
    uint l = gl_LocalInvocationID.x;
    for (uint t = l; t < T; t += WG) tx[t] = t0 + t < p.n_tok ? p.xo + (t0 + t) * p.n_in : NONE;
    barrier();
    coop_block(0u, r0, p.n_out, p.n_in, p.row_bytes);
    for (uint e = l; e < T * T; e += WG) {
        uint r = e / T, t = e % T;
        if (r0 + r < p.n_out && t0 + t < p.n_tok) o[p.oo + (t0 + t) * p.n_out + r0 + r] = sc[e];
    }
}
