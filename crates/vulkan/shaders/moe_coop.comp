#version 450
// moe_coop.glsl with 16 x 16 x 16 cooperative matrices.
#extension GL_GOOGLE_include_directive : require
#define C 16u
#include "moe_coop.glsl"
