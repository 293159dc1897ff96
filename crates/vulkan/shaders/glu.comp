#version 450
// gate = silu(gate) * up (mode 0), sigmoid(gate) * up (mode 2), or gpt-oss's clamped SwiGLU
// (mode 1):
// gate = min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(u, -limit, limit) + 1).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(std430, binding = 0) buffer G { float g[]; };
layout(std430, binding = 1) readonly buffer U { float u[]; };
layout(push_constant) uniform P { uint n; uint go; uint uo; uint mode; float alpha; float limit; } p;
void main() {
    uint i = flat_group() * WG + gl_LocalInvocationID.x;
    if (i >= p.n) return;
    float gv = g[p.go + i];
    float uv = u[p.uo + i];
    if (p.mode == 0u) {
        g[p.go + i] = gv / (1.0 + exp(-gv)) * uv;
    } else if (p.mode == 2u) {
        g[p.go + i] = uv / (1.0 + exp(-gv));
    } else {
        float gc = min(gv, p.limit);
        float uc = clamp(uv, -p.limit, p.limit);
        g[p.go + i] = gc / (1.0 + exp(-p.alpha * gc)) * (uc + 1.0);
    }
}
