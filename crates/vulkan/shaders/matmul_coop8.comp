#version 450
// matmul_coop.glsl with 8 x 8 x 8 cooperative matrices.
#extension GL_GOOGLE_include_directive : require
#define C 8u
#include "matmul_coop.glsl"
