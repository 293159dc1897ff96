#version 450
// MoE routing, one thread per token: scores (softmax or sigmoid) of the router logits, the
// choice-only correction bias, group-limited choice, top-k, renormalisation and scale, as
// hearth_core::moe::route computes them. ids are written as exact float values.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer L { float lg[]; };
layout(std430, binding = 1) readonly buffer B { float sb[]; };
layout(std430, binding = 2) buffer I { float ids[]; };
layout(std430, binding = 3) buffer Wt { float wts[]; };
layout(push_constant) uniform P {
    uint n_tok; uint n_expert; uint k; uint sigmoid; uint norm; float scale;
    uint n_group; uint topk_group; uint top2; uint has_b; uint lo; uint bo; uint io; uint wo;
} p;
const uint MAXE = 512;
const uint MAXG = 64;
float score[MAXE];
float choice[MAXE];
void main() {
    uint t = flat_group() * WG + gl_LocalInvocationID.x;
    if (t >= p.n_tok) return;
    uint ne = p.n_expert;
    uint base = p.lo + t * ne;
    float ninf = uintBitsToFloat(0xff800000u);
    if (p.sigmoid == 1u) {
        for (uint e = 0; e < ne; e++) score[e] = 1.0 / (1.0 + exp(-lg[base + e]));
    } else {
        float m = ninf;
        for (uint e = 0; e < ne; e++) m = max(m, lg[base + e]);
        float s = 0.0;
        for (uint e = 0; e < ne; e++) { score[e] = exp(lg[base + e] - m); s += score[e]; }
        for (uint e = 0; e < ne; e++) score[e] /= s;
    }
    for (uint e = 0; e < ne; e++) choice[e] = score[e] + (p.has_b == 1u ? sb[p.bo + e] : 0.0);
    if (p.n_group > 1u && p.topk_group < p.n_group) {
        uint per = ne / p.n_group;
        float gs[MAXG];
        for (uint g = 0; g < p.n_group; g++) {
            float a = ninf;
            float b = ninf;
            for (uint e = g * per; e < (g + 1u) * per; e++) {
                float v = choice[e];
                if (v > a) { b = a; a = v; } else if (v > b) { b = v; }
            }
            gs[g] = (p.top2 == 1u && per > 1u) ? a + b : a;
        }
        // keep the topk_group best groups (ties: the lower index)
        bool keep[MAXG];
        for (uint g = 0; g < p.n_group; g++) keep[g] = false;
        for (uint r = 0; r < p.topk_group; r++) {
            uint best = 0xffffffffu;
            for (uint g = 0; g < p.n_group; g++) {
                if (!keep[g] && (best == 0xffffffffu || gs[g] > gs[best])) best = g;
            }
            keep[best] = true;
        }
        for (uint e = 0; e < ne; e++) if (!keep[e / per]) choice[e] = ninf;
    }
    float sum = 0.0;
    for (uint r = 0; r < p.k; r++) {
        uint best = 0xffffffffu;
        for (uint e = 0; e < ne; e++) {
            if (isnan(choice[e])) continue;
            if (best == 0xffffffffu || choice[e] > choice[best]) best = e;
        }
        ids[p.io + t * p.k + r] = float(best);
        wts[p.wo + t * p.k + r] = score[best];
        sum += score[best];
        choice[best] = uintBitsToFloat(0x7fc00000u); // taken
    }
    if (p.norm == 1u && p.sigmoid == 1u) sum += 1e-20;
    for (uint r = 0; r < p.k; r++) {
        float w = wts[p.wo + t * p.k + r];
        if (p.norm == 1u) w /= sum;
        wts[p.wo + t * p.k + r] = w * p.scale;
    }
}
