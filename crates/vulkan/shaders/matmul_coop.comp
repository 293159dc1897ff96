#version 450
// matmul_coop.glsl with 16 x 16 x 16 cooperative matrices.
#extension GL_GOOGLE_include_directive : require
#define C 16u
#include "matmul_coop.glsl"
