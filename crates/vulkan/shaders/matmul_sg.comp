#version 450
// matmul.comp reduced with subgroup operations (devices that report subgroup arithmetic).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define SUBGROUP
#include "common.glsl"
#include "matmul.glsl"
