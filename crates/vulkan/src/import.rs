//! Weights read in place from the host memory that holds them: on a device that shares memory
//! with the host (an integrated GPU such as Strix Halo's or Apple's, lavapipe), the pages of the
//! mapped model file are imported as device memory (`VK_EXT_external_memory_host`), so a model
//! takes its file's size once instead of twice.
use crate::ctx::{Ctx, RawBuf};
use ash::vk;
use std::sync::Arc;

/// A device's host-import entry points and alignments.
pub(crate) struct HostImport {
    ext: ash::ext::external_memory_host::Device,
    /// `minImportedHostPointerAlignment`: an import starts and ends on such a boundary.
    page: u64,
    /// `minStorageBufferOffsetAlignment`: where in an import shaders may see a buffer start.
    bind: u64,
}

const HANDLE: vk::ExternalMemoryHandleTypeFlags =
    vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;

impl HostImport {
    pub fn new(i: &ash::Instance, pd: vk::PhysicalDevice, device: &ash::Device) -> HostImport {
        let mut hp = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
        let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut hp);
        // SAFETY: a device of this instance; the chained struct outlives the call.
        unsafe { i.get_physical_device_properties2(pd, &mut p2) };
        let bind = p2
            .properties
            .limits
            .min_storage_buffer_offset_alignment
            .max(4);
        HostImport {
            ext: ash::ext::external_memory_host::Device::new(i, device),
            page: hp.min_imported_host_pointer_alignment.max(1),
            bind,
        }
    }
}

impl HostImport {
    /// The alignment of an import's start and end.
    pub fn page(&self) -> u64 {
        self.page
    }
}

impl Ctx {
    /// Whether `len` bytes at address `addr` pass the checks [`Ctx::import`] makes before
    /// asking the driver: imports on, the start aligned as a storage buffer must start, and
    /// the pages no larger than the largest allocation.
    pub(crate) fn importable(&self, addr: usize, len: usize) -> bool {
        let Some(hi) = self.import.as_ref() else {
            return false;
        };
        let addr = addr as u64;
        let base = addr / hi.page * hi.page;
        let end = (addr + len as u64 + 4).next_multiple_of(hi.page);
        (addr - base).is_multiple_of(hi.bind) && end - base <= self.max_alloc
    }

    /// Whether the driver reads `backing` (a mapped model file, or any buffer weights lie
    /// in) in place: tried on its first bytes. Some drivers import only anonymous memory,
    /// and file systems differ, so placement asks the buffer the weights are in.
    pub(crate) fn imports_backing(self: &Arc<Self>, backing: &[u8]) -> bool {
        backing.len() >= 68
            // SAFETY: the bytes and the 4 after them lie in `backing`, which outlives the
            // buffer (dropped at the end of the statement).
            && unsafe { self.import(backing.as_ptr(), 64) }.is_some()
    }

    /// A buffer that reads `len` bytes at `ptr` in place (and the 4 bytes after them, which
    /// the shaders may read past a value's first word), or None where this cannot be done:
    /// no import on this device, `ptr` not aligned as a storage buffer must start, the pages
    /// larger than the largest allocation, or the driver refusing them (then the caller
    /// copies).
    ///
    /// # Safety
    /// `ptr .. ptr + len + 4` must be readable host memory that stays mapped and unchanged
    /// while the buffer exists (the caller keeps its storage alive).
    pub(crate) unsafe fn import(self: &Arc<Self>, ptr: *const u8, len: usize) -> Option<RawBuf> {
        let hi = self.import.as_ref()?;
        let addr = ptr as u64;
        let base = addr / hi.page * hi.page;
        let off = addr - base;
        let end = (addr + len as u64 + 4).next_multiple_of(hi.page);
        let size = end - base;
        if !self.importable(addr as usize, len) {
            return None;
        }
        let d = &self.device;
        // SAFETY: the pages lie in host memory the caller keeps mapped; every handle made
        // here is freed on failure or by RawBuf's Drop.
        unsafe {
            let mut hpp = vk::MemoryHostPointerPropertiesEXT::default();
            (hi.ext.fp().get_memory_host_pointer_properties_ext)(
                hi.ext.device(),
                HANDLE,
                base as *const _,
                &mut hpp,
            )
            .result()
            .ok()?;
            let mut ext_ci = vk::ExternalMemoryBufferCreateInfo::default().handle_types(HANDLE);
            let bci = vk::BufferCreateInfo::default()
                .size(size)
                .usage(vk::BufferUsageFlags::STORAGE_BUFFER)
                .sharing_mode(vk::SharingMode::EXCLUSIVE)
                .push_next(&mut ext_ci);
            let buffer = d.create_buffer(&bci, None).ok()?;
            let req = d.get_buffer_memory_requirements(buffer);
            let bits = req.memory_type_bits & hpp.memory_type_bits;
            let ti = (0..self.mem_props.memory_type_count).find(|&t| bits & (1 << t) != 0);
            let mem = ti.and_then(|ti| {
                let mut imp = vk::ImportMemoryHostPointerInfoEXT::default()
                    .handle_type(HANDLE)
                    .host_pointer(base as *mut _);
                let mai = vk::MemoryAllocateInfo::default()
                    .allocation_size(size)
                    .memory_type_index(ti)
                    .push_next(&mut imp);
                d.allocate_memory(&mai, None).ok()
            });
            let Some(mem) = mem else {
                d.destroy_buffer(buffer, None);
                return None;
            };
            if req.size > size || d.bind_buffer_memory(buffer, mem, 0).is_err() {
                d.destroy_buffer(buffer, None);
                d.free_memory(mem, None);
                return None;
            }
            Some(RawBuf {
                buffer,
                mem,
                ptr: std::ptr::null_mut(),
                bytes: len,
                off,
                ctx: self.clone(),
            })
        }
    }
}
