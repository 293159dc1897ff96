#version 450
// The depthwise causal convolution with SiLU in front of linear attention (hearth_core::linear::
// ssm_conv_ref). One thread per (segment, channel) walks the segment's tokens in order with a
// window of the last kernel - 1 inputs, starting from the segment's state (zeros when fresh) and
// leaving it there. Segments come as (row0, n, slot, fresh) in tab.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer W { float w[]; };
layout(std430, binding = 2) buffer S { float st[]; };
layout(std430, binding = 3) buffer O { float o[]; };
layout(std430, binding = 4) readonly buffer T { uint tab[]; };
layout(push_constant) uniform P {
    uint n; uint ch; uint kernel; uint xo; uint wo; uint so; uint oo; uint stride; uint off; uint to;
} p;
const uint MAXK = 16u;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    uint sg = i / p.ch;
    uint c = i % p.ch;
    uint row0 = tab[p.to + 4u * sg];
    uint nt = tab[p.to + 4u * sg + 1u];
    uint slot = tab[p.to + 4u * sg + 2u];
    bool fresh = tab[p.to + 4u * sg + 3u] != 0u;
    uint hist = p.kernel - 1u;
    uint sb = p.so + slot * p.stride + p.off;
    float win[MAXK];
    for (uint j = 0u; j < hist; j++) {
        win[j] = fresh ? 0.0 : st[sb + j * p.ch + c];
    }
    for (uint t = 0u; t < nt; t++) {
        float xin = x[p.xo + (row0 + t) * p.ch + c];
        float acc = 0.0;
        for (uint j = 0u; j < hist; j++) {
            acc += w[p.wo + c * p.kernel + j] * win[j];
        }
        acc += w[p.wo + c * p.kernel + hist] * xin;
        o[p.oo + (row0 + t) * p.ch + c] = acc / (1.0 + exp(-acc));
        for (uint j = 0u; j + 1u < hist; j++) {
            win[j] = win[j + 1u];
        }
        if (hist > 0u) win[hist - 1u] = xin;
    }
    for (uint j = 0u; j < hist; j++) {
        st[sb + j * p.ch + c] = win[j];
    }
}
