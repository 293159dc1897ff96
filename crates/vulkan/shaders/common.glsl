// Shared by every hearth compute shader: the workgroup size comes from specialization
// constant 0, and a dispatch too large for one dimension is spread over y (see `flat_group`).
layout(constant_id = 0) const uint WG = 128;
layout(local_size_x_id = 0) in;

// The workgroup's index in a dispatch of (x, y) groups, counted along x first.
uint flat_group() {
    return gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
}
