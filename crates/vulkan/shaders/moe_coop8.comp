#version 450
// moe_coop.glsl with 8 x 8 x 8 cooperative matrices.
#extension GL_GOOGLE_include_directive : require
#define C 8u
#include "moe_coop.glsl"
