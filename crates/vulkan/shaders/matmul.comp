#version 450
// The matrix product of a weight in any type the device holds as it is (matmul.glsl): a
// workgroup per (row, tile of tokens), reduced in shared memory.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "matmul.glsl"
