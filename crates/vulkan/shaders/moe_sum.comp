#version 450
// out[t, c] = sum over the token's slots j of w[t*k + j] * y[t*k + j, c].
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) readonly buffer Y { float y[]; };
layout(std430, binding = 1) readonly buffer Wt { float w[]; };
layout(std430, binding = 2) buffer O { float o[]; };
layout(push_constant) uniform P { uint n; uint width; uint k; uint wo; uint oo; } p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    uint t = i / p.width;
    uint c = i % p.width;
    float s = 0.0;
    for (uint j = 0; j < p.k; j++) s += w[p.wo + t * p.k + j] * y[(t * p.k + j) * p.width + c];
    o[p.oo + i] = s;
}
