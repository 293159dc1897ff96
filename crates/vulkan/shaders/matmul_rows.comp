#version 450
// The matrix product with a thread per (row, tile of tokens) and no reductions or barriers
// (matmul.glsl), for devices whose threads are SIMD lanes of a CPU (lavapipe).
#extension GL_GOOGLE_include_directive : require
#define ROWS
#include "common.glsl"
#include "matmul.glsl"
