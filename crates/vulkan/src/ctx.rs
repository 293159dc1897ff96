//! The Vulkan device: loader, instance, one compute queue, memory, pipelines and dispatch.
//!
//! The loader (`libvulkan.so.1`, `vulkan-1.dll`, `libvulkan.dylib`) is opened at run time, so
//! the same binary runs on a machine without Vulkan and says so in an error.
use ash::vk;
use hearth_core::{Error, Result};
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Mutex};

fn vk_err(what: &str) -> impl Fn(vk::Result) -> Error + '_ {
    move |e| Error::Backend(format!("vulkan: {what}: {e}"))
}

/// A physical device as the loader reports it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Index among the loader's devices (`--device vulkan:N`).
    pub index: usize,
    /// The driver's name for it.
    pub name: String,
    /// Integrated, discrete, virtual or CPU (lavapipe).
    pub kind: String,
    /// Bytes of its largest device-local heap.
    pub memory: u64,
    /// Bytes of that heap this process may still use: VK_EXT_memory_budget's budget less
    /// its usage where the driver has the extension (when the device was opened), else the
    /// heap's size.
    pub free: u64,
    /// Whether `free` comes from VK_EXT_memory_budget.
    pub budget: bool,
    /// Threads of a subgroup.
    pub subgroup: u32,
    /// Whether compute shaders have subgroup arithmetic (`subgroupAdd`).
    pub subgroup_arith: bool,
    /// The side C of the cooperative-matrix products the matmul kernel uses: 16 or 8 where
    /// the device multiplies C x C f16 matrices into f32 ones at subgroup scope
    /// (`VK_KHR_cooperative_matrix`, with `shaderFloat16` and the Vulkan memory model, as
    /// `shaders/matmul_coop.glsl` needs), else 0.
    pub coop: u32,
    /// Largest single allocation, in bytes (the smaller of the driver's allocation limit and
    /// its largest storage-buffer binding).
    pub max_alloc: u64,
}

/// Settings of a device's context that tests (and users, through the environment) change.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Keep buffers in device-local memory reached through staging copies (true), or in
    /// memory the host maps (false); None: staging on a discrete GPU only.
    pub staging: Option<bool>,
    /// A lower largest allocation than the device's, in bytes (at least 4096): weights
    /// larger than it are split.
    pub max_alloc: Option<u64>,
    /// Free device memory to report instead of the driver's, in bytes (to try automatic
    /// placement against a smaller GPU).
    pub budget: Option<u64>,
    /// Whether weights may be read in place from the host memory that holds them (the mapped
    /// model file) where the device shares memory with the host (`VK_EXT_external_memory_host`);
    /// None: yes where the driver has the extension.
    pub import: Option<bool>,
    /// The matmul kernel instead of the device's default (`HEARTH_VK_MATMUL`).
    pub matmul: Option<crate::MatmulKernel>,
}

impl Options {
    /// The options the environment sets: `HEARTH_VK_STAGING=1` or `0`,
    /// `HEARTH_VK_MAX_ALLOC=bytes`, `HEARTH_VK_BUDGET=bytes`, `HEARTH_VK_IMPORT=1` or `0`, and
    /// `HEARTH_VK_MATMUL=rows|workgroup|subgroup|coop`.
    pub fn from_env() -> Result<Options> {
        let switch = |name: &str| match std::env::var(name).as_deref() {
            Ok("1") => Ok(Some(true)),
            Ok("0") => Ok(Some(false)),
            Ok("") | Err(_) => Ok(None),
            Ok(v) => Err(Error::Invalid(format!("{name}={v}: expected 1 or 0"))),
        };
        let staging = switch("HEARTH_VK_STAGING")?;
        let import = switch("HEARTH_VK_IMPORT")?;
        let max_alloc = match std::env::var("HEARTH_VK_MAX_ALLOC") {
            Ok(v) => Some(v.trim().parse().map_err(|_| {
                Error::Invalid(format!(
                    "HEARTH_VK_MAX_ALLOC={v}: expected a number of bytes"
                ))
            })?),
            Err(_) => None,
        };
        let budget = match std::env::var("HEARTH_VK_BUDGET") {
            Ok(v) => Some(v.trim().parse().map_err(|_| {
                Error::Invalid(format!("HEARTH_VK_BUDGET={v}: expected a number of bytes"))
            })?),
            Err(_) => None,
        };
        let matmul = match std::env::var("HEARTH_VK_MATMUL").as_deref() {
            Ok("") | Err(_) => None,
            Ok(v) => Some(crate::MatmulKernel::parse(v).ok_or_else(|| {
                Error::Invalid(format!(
                    "HEARTH_VK_MATMUL={v}: expected rows, workgroup, subgroup or coop"
                ))
            })?),
        };
        Ok(Options {
            staging,
            max_alloc,
            budget,
            import,
            matmul,
        })
    }
}

/// The loader and an instance.
pub(crate) struct Instance {
    _entry: ash::Entry,
    pub instance: ash::Instance,
}

impl Instance {
    pub fn new() -> Result<Instance> {
        // SAFETY: loading the system's Vulkan loader runs its initialisation code; that is
        // what every Vulkan program does.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| {
            Error::Unsupported(format!(
                "Vulkan is not available on this machine: the Vulkan loader could not be \
                 opened ({e}); install a GPU driver with Vulkan support (on Debian/Ubuntu: \
                 apt-get install libvulkan1 mesa-vulkan-drivers)"
            ))
        })?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"hearth")
            .api_version(vk::API_VERSION_1_2);
        let ci = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: the create info and what it points to live through the call.
        let instance =
            unsafe { entry.create_instance(&ci, None) }.map_err(vk_err("creating an instance"))?;
        Ok(Instance {
            _entry: entry,
            instance,
        })
    }

    pub fn devices(&self) -> Result<Vec<(vk::PhysicalDevice, DeviceInfo)>> {
        // SAFETY: a valid instance.
        let pds = unsafe { self.instance.enumerate_physical_devices() }
            .map_err(vk_err("listing devices"))?;
        Ok(pds
            .into_iter()
            .enumerate()
            .map(|(index, pd)| (pd, self.info(index, pd)))
            .collect())
    }

    fn info(&self, index: usize, pd: vk::PhysicalDevice) -> DeviceInfo {
        let i = &self.instance;
        let mut sub = vk::PhysicalDeviceSubgroupProperties::default();
        let mut m3 = vk::PhysicalDeviceMaintenance3Properties::default();
        let mut p2 = vk::PhysicalDeviceProperties2::default()
            .push_next(&mut sub)
            .push_next(&mut m3);
        // SAFETY: a device of this instance; the chained structs outlive the call.
        unsafe { i.get_physical_device_properties2(pd, &mut p2) };
        let props = p2.properties;
        // SAFETY: a device of this instance.
        let exts = unsafe { i.enumerate_device_extension_properties(pd) }.unwrap_or_default();
        let has = |name: &CStr| exts.iter().any(|e| e.extension_name_as_c_str() == Ok(name));
        let budget = has(ash::ext::memory_budget::NAME);
        let coop = match props_api(&props) && has(ash::khr::cooperative_matrix::NAME) {
            true => self.coop_size(pd),
            false => 0,
        };
        let mut mb = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
        let mut m2 = vk::PhysicalDeviceMemoryProperties2::default();
        if budget {
            m2 = m2.push_next(&mut mb);
        }
        // SAFETY: a device of this instance; the chained struct outlives the call.
        unsafe { i.get_physical_device_memory_properties2(pd, &mut m2) };
        let mem = m2.memory_properties;
        let heap = (0..mem.memory_heap_count as usize)
            .filter(|&h| {
                mem.memory_heaps[h]
                    .flags
                    .contains(vk::MemoryHeapFlags::DEVICE_LOCAL)
            })
            .max_by_key(|&h| mem.memory_heaps[h].size);
        let memory = heap.map_or(0, |h| mem.memory_heaps[h].size);
        let free = match heap {
            Some(h) if budget && mb.heap_budget[h] > 0 => {
                mb.heap_budget[h].saturating_sub(mb.heap_usage[h])
            }
            _ => memory,
        };
        let budget = budget && heap.is_some_and(|h| mb.heap_budget[h] > 0);
        let name = props
            .device_name_as_c_str()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".into());
        let kind = match props.device_type {
            vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated GPU",
            vk::PhysicalDeviceType::DISCRETE_GPU => "discrete GPU",
            vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual GPU",
            vk::PhysicalDeviceType::CPU => "CPU",
            _ => "other",
        };
        DeviceInfo {
            index,
            name,
            kind: kind.into(),
            memory,
            free,
            budget,
            subgroup: sub.subgroup_size,
            subgroup_arith: sub
                .supported_operations
                .contains(vk::SubgroupFeatureFlags::ARITHMETIC)
                && sub.supported_stages.contains(vk::ShaderStageFlags::COMPUTE),
            coop,
            max_alloc: m3
                .max_memory_allocation_size
                .min(u64::from(props.limits.max_storage_buffer_range)),
        }
    }
}

impl Instance {
    /// The side C (16, else 8) of the C x C x C products of f16 matrices into f32 at subgroup
    /// scope that device `pd` (which has `VK_KHR_cooperative_matrix`) reports, where it also
    /// has what `matmul_coop.glsl` uses: the cooperative-matrix feature, `shaderFloat16` and
    /// the Vulkan memory model; else 0.
    fn coop_size(&self, pd: vk::PhysicalDevice) -> u32 {
        let i = &self.instance;
        let mut cf = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
        let mut f2 = vk::PhysicalDeviceFeatures2::default()
            .push_next(&mut cf)
            .push_next(&mut f12);
        // SAFETY: a device of this instance (API 1.2); the chained structs outlive the call.
        unsafe { i.get_physical_device_features2(pd, &mut f2) };
        if cf.cooperative_matrix == 0 || f12.shader_float16 == 0 || f12.vulkan_memory_model == 0 {
            return 0;
        }
        let cm = ash::khr::cooperative_matrix::Instance::new(&self._entry, i);
        // SAFETY: a device of this instance that has the extension.
        let props = unsafe { cm.get_physical_device_cooperative_matrix_properties(pd) };
        let props = props.unwrap_or_default();
        let has = |c: u32| {
            props.iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (c, c, c)
                    && p.a_type == vk::ComponentTypeKHR::FLOAT16
                    && p.b_type == vk::ComponentTypeKHR::FLOAT16
                    && p.c_type == vk::ComponentTypeKHR::FLOAT32
                    && p.result_type == vk::ComponentTypeKHR::FLOAT32
                    && p.scope == vk::ScopeKHR::SUBGROUP
            })
        };
        [16, 8].into_iter().find(|&c| has(c)).unwrap_or(0)
    }
}

/// Whether a device reports Vulkan 1.2 or later (whose feature structs the queries use).
fn props_api(p: &vk::PhysicalDeviceProperties) -> bool {
    vk::api_version_major(p.api_version) > 1 || vk::api_version_minor(p.api_version) >= 2
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every device made from it is gone (Ctx holds the instance in an Arc).
        unsafe { self.instance.destroy_instance(None) };
    }
}

/// One compiled compute shader.
pub(crate) struct Pipeline {
    pub pipeline: vk::Pipeline,
    pub layout: vk::PipelineLayout,
    set_layout: vk::DescriptorSetLayout,
    module: vk::ShaderModule,
    pub bindings: u32,
}

/// Recording state: one command buffer that collects a step's dispatches until the host
/// must read or write memory ([`Ctx::flush`]), its fence, and the staging arena for the small
/// tables ops bring (positions, rows, page tables).
struct Cmd {
    pool: vk::CommandPool,
    buf: vk::CommandBuffer,
    fence: vk::Fence,
    /// Whether `buf` is recording.
    open: bool,
    /// Dispatches recorded since the last submission.
    recorded: usize,
    /// Staging for op tables: written at `used..`, reset after each submission.
    arena: Option<Arc<RawBuf>>,
    used: usize,
    /// Buffers the recorded commands use that nothing else holds.
    keep: Vec<Arc<RawBuf>>,
    /// Bytes of the staging buffers in `keep` (uploads wait once they pass [`MAX_STAGED`]).
    staged: usize,
    /// Host-visible buffer that downloads from device-local memory copy through.
    down: Option<Arc<RawBuf>>,
}

/// Bytes of the staging arena.
const ARENA: usize = 8 << 20;
/// Dispatches after which a step is submitted without waiting to be asked.
const MAX_RECORDED: usize = 4096;
/// Bytes of upload staging buffers after which the recorded commands are submitted (so
/// loading a model holds at most this much pinned host memory beside it).
const MAX_STAGED: usize = 256 << 20;
/// Largest upload written into one staging buffer.
const STAGE_CHUNK: usize = 64 << 20;

/// A logical device with one compute queue.
pub(crate) struct Ctx {
    /// Kept alive until the device is destroyed.
    _inst: Arc<Instance>,
    pub info: DeviceInfo,
    pub device: ash::Device,
    push: ash::khr::push_descriptor::Device,
    queue: vk::Queue,
    pub(crate) mem_props: vk::PhysicalDeviceMemoryProperties,
    cmd: Mutex<Cmd>,
    /// By shader and the value of its specialization constant 1 (a weight's type).
    pipelines: Mutex<HashMap<(&'static str, u32), Arc<Pipeline>>>,
    pub wg: u32,
    /// Whether buffers live in device-local memory the host does not map, reached through
    /// staging copies recorded in the command stream (a discrete GPU), rather than in memory
    /// both see (an integrated GPU, lavapipe). `HEARTH_VK_STAGING=1` (or `0`) forces it.
    pub staging: bool,
    /// Largest buffer, in bytes: the device's, or less where `HEARTH_VK_MAX_ALLOC` says.
    pub max_alloc: u64,
    /// Importing host memory for weights ([`Ctx::import`]), where the device shares memory
    /// with the host and has `VK_EXT_external_memory_host`.
    pub(crate) import: Option<crate::import::HostImport>,
}

// SAFETY: the raw Vulkan handles are used under the `cmd` lock for recording and submission;
// the rest of the API used is thread-safe by the specification.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

/// A buffer: in host-visible memory mapped for its whole life, or (on a device that stages
/// its transfers) in device-local memory that only the device reads and writes.
pub(crate) struct RawBuf {
    pub buffer: vk::Buffer,
    pub(crate) mem: vk::DeviceMemory,
    /// The mapping, or null where the host cannot see the memory (reach it through
    /// [`Ctx::write`] and [`Ctx::read`]) or the buffer is imported host memory that only
    /// shaders read ([`Ctx::import`]).
    pub(crate) ptr: *mut u8,
    pub bytes: usize,
    /// Where shaders see the buffer start, in bytes: 0, or for imported memory the data's
    /// distance from the page the import starts at.
    pub(crate) off: u64,
    pub(crate) ctx: Arc<Ctx>,
}

// SAFETY: the mapping is only read or written while no command that uses the buffer runs
// (every op waits for its work before it returns).
unsafe impl Send for RawBuf {}
unsafe impl Sync for RawBuf {}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // recorded commands may still use it
        let _ = self.ctx.flush();
        // SAFETY: no command uses the buffer any more.
        unsafe {
            self.ctx.device.destroy_buffer(self.buffer, None);
            if !self.ptr.is_null() {
                self.ctx.device.unmap_memory(self.mem);
            }
            self.ctx.device.free_memory(self.mem, None);
        }
    }
}

impl Ctx {
    pub fn new(index: usize, opts: &Options) -> Result<Arc<Ctx>> {
        let inst = Arc::new(Instance::new()?);
        let devs = inst.devices()?;
        let n = devs.len();
        let (pd, mut info) = devs.into_iter().nth(index).ok_or_else(|| {
            Error::Unsupported(format!(
                "Vulkan device {index} does not exist ({n} found; see `hearth devices`)"
            ))
        })?;
        if let Some(b) = opts.budget {
            info.free = b;
            info.budget = true;
        }
        let i = &inst.instance;
        // SAFETY: a device of this instance.
        let qfs = unsafe { i.get_physical_device_queue_family_properties(pd) };
        let qf = qfs
            .iter()
            .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or_else(|| Error::Unsupported(format!("{} has no compute queue", info.name)))?
            as u32;
        // SAFETY: a device of this instance.
        let exts = unsafe { i.enumerate_device_extension_properties(pd) }
            .map_err(vk_err("listing extensions"))?;
        let has = |name: &CStr| {
            exts.iter()
                .any(|e| e.extension_name_as_c_str().is_ok_and(|n| n == name))
        };
        if !has(ash::khr::push_descriptor::NAME) {
            return Err(Error::Unsupported(format!(
                "{} lacks VK_KHR_push_descriptor, which hearth's Vulkan backend needs",
                info.name
            )));
        }
        let prio = [1.0f32];
        let qci = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(qf)
            .queue_priorities(&prio)];
        let staging = opts
            .staging
            .unwrap_or_else(|| staging_default(&info, &mem_props_of(i, pd)));
        // host memory is read in place only where the device shares it (reading it across
        // a bus would be slower than a copy in device memory)
        let import =
            !staging && opts.import != Some(false) && has(ash::ext::external_memory_host::NAME);
        let mut ext_names = vec![ash::khr::push_descriptor::NAME.as_ptr()];
        if import {
            ext_names.push(ash::ext::external_memory_host::NAME.as_ptr());
        }
        // what matmul_coop.glsl needs, where the device has it
        let mut cf = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
        let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
        if info.coop > 0 {
            ext_names.push(ash::khr::cooperative_matrix::NAME.as_ptr());
            cf.cooperative_matrix = vk::TRUE;
            f12.shader_float16 = vk::TRUE;
            f12.vulkan_memory_model = vk::TRUE;
        }
        let mut dci = vk::DeviceCreateInfo::default()
            .queue_create_infos(&qci)
            .enabled_extension_names(&ext_names);
        if info.coop > 0 {
            dci = dci.push_next(&mut cf).push_next(&mut f12);
        }
        // SAFETY: the create info and what it points to live through the call.
        let device =
            unsafe { i.create_device(pd, &dci, None) }.map_err(vk_err("creating the device"))?;
        // SAFETY: the queue family and index were requested above.
        let queue = unsafe { device.get_device_queue(qf, 0) };
        let push = ash::khr::push_descriptor::Device::new(i, &device);
        // SAFETY: a device of this instance.
        let mem_props = unsafe { i.get_physical_device_memory_properties(pd) };
        let pci = vk::CommandPoolCreateInfo::default()
            .queue_family_index(qf)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: valid device and create infos.
        let cmd = unsafe {
            let pool = device
                .create_command_pool(&pci, None)
                .map_err(vk_err("creating a command pool"))?;
            let ai = vk::CommandBufferAllocateInfo::default()
                .command_pool(pool)
                .level(vk::CommandBufferLevel::PRIMARY)
                .command_buffer_count(1);
            let buf = device
                .allocate_command_buffers(&ai)
                .map_err(vk_err("allocating a command buffer"))?[0];
            let fence = device
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .map_err(vk_err("creating a fence"))?;
            Cmd {
                pool,
                buf,
                fence,
                open: false,
                recorded: 0,
                arena: None,
                used: 0,
                keep: Vec::new(),
                staged: 0,
                down: None,
            }
        };
        let import = match import {
            true => Some(crate::import::HostImport::new(i, pd, &device)),
            false => None,
        };
        let max_alloc = opts
            .max_alloc
            .map_or(info.max_alloc, |n| n.clamp(4096, info.max_alloc));
        // a workgroup of at least 64 threads, a whole number of subgroups
        let wg = info.subgroup.clamp(1, 128).max(64).next_power_of_two();
        Ok(Arc::new(Ctx {
            _inst: inst.clone(),
            info,
            device,
            push,
            queue,
            mem_props,
            cmd: Mutex::new(cmd),
            pipelines: Mutex::new(HashMap::new()),
            wg,
            staging,
            max_alloc,
            import,
        }))
    }

    /// A buffer of `bytes` (at least 4) for the device's work, zeroed: device-local where the
    /// context stages its transfers, else host-visible and mapped.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<RawBuf> {
        let b = self.alloc_in(bytes, !self.staging, false)?;
        if b.ptr.is_null() {
            // zeroed by the device, in order with the commands that follow
            self.record(|d, cb| {
                // SAFETY: recording under the lock; the buffer outlives the submission (its
                // Drop flushes first).
                unsafe { d.cmd_fill_buffer(cb, b.buffer, 0, vk::WHOLE_SIZE, 0) }
            })?;
        }
        Ok(b)
    }

    /// A host-visible, coherent, mapped buffer of `bytes` (at least 4), zeroed, for staging
    /// (the device's own largest allocation applies, not a lowered one).
    pub fn alloc_host(self: &Arc<Self>, bytes: usize) -> Result<RawBuf> {
        self.alloc_in(bytes, true, true)
    }

    /// A buffer in mapped host-visible memory (`host`) or device-local memory, for staging
    /// (`staging`) or for ops.
    fn alloc_in(self: &Arc<Self>, bytes: usize, host: bool, staging: bool) -> Result<RawBuf> {
        let bytes = bytes.max(4);
        // a lowered limit applies to the buffers ops use; staging buffers keep the device's
        let limit = if staging {
            self.info.max_alloc
        } else {
            self.max_alloc
        };
        if bytes as u64 > limit {
            return Err(Error::Unsupported(format!(
                "a buffer of {bytes} bytes ({:.2} GiB) exceeds {}'s largest allocation of {} \
                 bytes ({:.2} GiB{})",
                bytes as f64 / (1u64 << 30) as f64,
                self.info.name,
                limit,
                limit as f64 / (1u64 << 30) as f64,
                if limit < self.info.max_alloc {
                    ", lowered by HEARTH_VK_MAX_ALLOC"
                } else {
                    ""
                }
            )));
        }
        let d = &self.device;
        let bci = vk::BufferCreateInfo::default()
            .size(bytes as u64)
            .usage(
                vk::BufferUsageFlags::STORAGE_BUFFER
                    | vk::BufferUsageFlags::TRANSFER_SRC
                    | vk::BufferUsageFlags::TRANSFER_DST,
            )
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid device and create info; every handle made here is freed on error or
        // by RawBuf's Drop.
        unsafe {
            let buffer = d
                .create_buffer(&bci, None)
                .map_err(vk_err("creating a buffer"))?;
            let req = d.get_buffer_memory_requirements(buffer);
            let mp = &self.mem_props;
            let find = |want: vk::MemoryPropertyFlags| {
                (0..mp.memory_type_count).find(|&t| {
                    req.memory_type_bits & (1 << t) != 0
                        && mp.memory_types[t as usize].property_flags.contains(want)
                })
            };
            let ti = match host {
                true => find(
                    vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
                ),
                false => find(vk::MemoryPropertyFlags::DEVICE_LOCAL)
                    .or_else(|| find(vk::MemoryPropertyFlags::empty())),
            };
            let Some(ti) = ti else {
                d.destroy_buffer(buffer, None);
                return Err(Error::Unsupported(format!(
                    "{} has no {} memory for buffers",
                    self.info.name,
                    if host { "host-visible" } else { "usable" }
                )));
            };
            let mai = vk::MemoryAllocateInfo::default()
                .allocation_size(req.size)
                .memory_type_index(ti);
            let mem = match d.allocate_memory(&mai, None) {
                Ok(m) => m,
                Err(e) => {
                    d.destroy_buffer(buffer, None);
                    return Err(Error::Backend(format!(
                        "vulkan: allocating {bytes} bytes on {}: {e}",
                        self.info.name
                    )));
                }
            };
            if let Err(e) = d.bind_buffer_memory(buffer, mem, 0) {
                d.destroy_buffer(buffer, None);
                d.free_memory(mem, None);
                return Err(Error::Backend(format!("vulkan: binding a buffer: {e}")));
            }
            let mut ptr = std::ptr::null_mut();
            if host {
                match d.map_memory(mem, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) {
                    Ok(p) => ptr = p as *mut u8,
                    Err(e) => {
                        d.destroy_buffer(buffer, None);
                        d.free_memory(mem, None);
                        return Err(Error::Backend(format!("vulkan: mapping a buffer: {e}")));
                    }
                }
                std::ptr::write_bytes(ptr, 0, bytes);
            }
            Ok(RawBuf {
                buffer,
                mem,
                ptr,
                bytes,
                off: 0,
                ctx: self.clone(),
            })
        }
    }

    /// A buffer of `bytes` for the device's work whose contents `fill` writes (through a
    /// staging buffer where the device's memory is not mapped).
    pub fn alloc_with(
        self: &Arc<Self>,
        bytes: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<RawBuf> {
        if !self.staging {
            let b = self.alloc_in(bytes, true, false)?;
            // SAFETY: a new mapping of at least `bytes`, which no command uses yet.
            fill(unsafe { std::slice::from_raw_parts_mut(b.ptr, bytes) })?;
            return Ok(b);
        }
        let b = self.alloc_in(bytes, false, false)?;
        if bytes <= STAGE_CHUNK {
            let s = self.alloc_host(bytes)?;
            // SAFETY: a new mapping of at least `bytes`, which no command uses yet.
            fill(unsafe { std::slice::from_raw_parts_mut(s.ptr, bytes) })?;
            self.copy_staged(Arc::new(s), &b, 0, bytes)?;
        } else {
            // words, so that the bytes are aligned as a mapping's are
            let mut h = vec![0u32; bytes.div_ceil(4)];
            // SAFETY: plain words viewed as their bytes.
            let hb = unsafe { std::slice::from_raw_parts_mut(h.as_mut_ptr() as *mut u8, bytes) };
            fill(hb)?;
            self.write(&b, 0, hb)?;
        }
        Ok(b)
    }

    /// Write `data` at byte `off` of `dst`: into its mapping once the recorded work ran, or
    /// through staging copies recorded in order with it (nothing waits).
    pub fn write(self: &Arc<Self>, dst: &RawBuf, off: usize, data: &[u8]) -> Result<()> {
        if off.checked_add(data.len()).is_none_or(|e| e > dst.bytes) {
            return Err(Error::Invalid(format!(
                "vulkan: writing {} bytes at {off} of a buffer of {}",
                data.len(),
                dst.bytes
            )));
        }
        if !dst.ptr.is_null() {
            self.flush()?;
            // SAFETY: the range lies in the mapping and no command runs.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.ptr.add(off), data.len()) };
            return Ok(());
        }
        if data.len() <= ARENA / 4 {
            let (a, aoff) = self.stage_bytes(data)?;
            return self.record_copy(&a, aoff, dst, off, data.len());
        }
        for (i, c) in data.chunks(STAGE_CHUNK).enumerate() {
            let s = self.alloc_host(c.len())?;
            // SAFETY: a new mapping of at least `c.len()`.
            unsafe { std::ptr::copy_nonoverlapping(c.as_ptr(), s.ptr, c.len()) };
            self.copy_staged(Arc::new(s), dst, off + i * STAGE_CHUNK, c.len())?;
        }
        Ok(())
    }

    /// Read `out.len()` bytes at byte `off` of `src`, once the recorded work ran.
    pub fn read(self: &Arc<Self>, src: &RawBuf, off: usize, out: &mut [u8]) -> Result<()> {
        let n = out.len();
        if off.checked_add(n).is_none_or(|e| e > src.bytes) {
            return Err(Error::Invalid(format!(
                "vulkan: reading {n} bytes at {off} of a buffer of {}",
                src.bytes
            )));
        }
        if !src.ptr.is_null() {
            self.flush()?;
            // SAFETY: the range lies in the mapping and no command runs.
            unsafe { std::ptr::copy_nonoverlapping(src.ptr.add(off), out.as_mut_ptr(), n) };
            return Ok(());
        }
        if n == 0 {
            return Ok(());
        }
        let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        let old = match &cmd.down {
            Some(b) if b.bytes >= n => None,
            _ => {
                let size = n.next_power_of_two().min(self.max_alloc as usize).max(n);
                cmd.down.replace(Arc::new(self.alloc_host(size)?))
            }
        };
        let down = cmd.down.clone().expect("made above");
        let d = &self.device;
        let region = [vk::BufferCopy::default()
            .src_offset(off as u64)
            .dst_offset(0)
            .size(n as u64)];
        let to_host = vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ);
        // SAFETY: the command buffer is ours under the lock; both buffers outlive the
        // submission below, which completes before the mapping is read.
        let keep = unsafe {
            self.begin(&mut cmd)?;
            self.barrier(cmd.buf);
            d.cmd_copy_buffer(cmd.buf, src.buffer, down.buffer, &region);
            self.memory_barrier(
                cmd.buf,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST,
                to_host,
            );
            let keep = self.submit(&mut cmd)?;
            std::ptr::copy_nonoverlapping(down.ptr, out.as_mut_ptr(), n);
            keep
        };
        drop(cmd);
        drop((keep, old, down));
        Ok(())
    }

    /// Record a copy of `n` bytes from the staging buffer `s` to byte `off` of `dst`, keeping
    /// `s` until it ran.
    fn copy_staged(
        self: &Arc<Self>,
        s: Arc<RawBuf>,
        dst: &RawBuf,
        off: usize,
        n: usize,
    ) -> Result<()> {
        self.record_copy(&s, 0, dst, off, n)?;
        let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        cmd.staged += s.bytes;
        cmd.keep.push(s);
        if cmd.staged > MAX_STAGED {
            let keep = self.submit(&mut cmd)?;
            drop(cmd);
            drop(keep);
        }
        Ok(())
    }

    /// Record a copy of `n` bytes from byte `so` of `src` to byte `d0` of `dst`, after the
    /// work recorded before it.
    fn record_copy(
        &self,
        src: &RawBuf,
        so: usize,
        dst: &RawBuf,
        d0: usize,
        n: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let region = [vk::BufferCopy::default()
            .src_offset(so as u64)
            .dst_offset(d0 as u64)
            .size(n as u64)];
        self.record(|d, cb| {
            // SAFETY: recording under the lock; the caller keeps both buffers alive until
            // the submission (a RawBuf's Drop flushes first).
            unsafe { d.cmd_copy_buffer(cb, src.buffer, dst.buffer, &region) }
        })
    }

    /// Record what `f` records, after a barrier that orders it behind the work before it.
    fn record(&self, f: impl FnOnce(&ash::Device, vk::CommandBuffer)) -> Result<()> {
        let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the command buffer is ours under the lock.
        unsafe {
            self.begin(&mut cmd)?;
            self.barrier(cmd.buf);
        }
        f(&self.device, cmd.buf);
        self.count_recorded(cmd)
    }

    /// Count one command recorded under `cmd`, submitting the step once it holds
    /// [`MAX_RECORDED`] (the lock is released before the buffers it kept are dropped).
    fn count_recorded(&self, mut cmd: std::sync::MutexGuard<'_, Cmd>) -> Result<()> {
        cmd.recorded += 1;
        if cmd.recorded >= MAX_RECORDED {
            let keep = self.submit(&mut cmd)?;
            drop(cmd);
            drop(keep);
        }
        Ok(())
    }

    /// Record one memory barrier from `src` to `dst` stages.
    ///
    /// # Safety
    /// `cb` must be this context's command buffer, recording, under the `cmd` lock.
    unsafe fn memory_barrier(
        &self,
        cb: vk::CommandBuffer,
        src: vk::PipelineStageFlags,
        dst: vk::PipelineStageFlags,
        mb: vk::MemoryBarrier<'_>,
    ) {
        // SAFETY: as the caller promises.
        unsafe {
            self.device.cmd_pipeline_barrier(
                cb,
                src,
                dst,
                vk::DependencyFlags::empty(),
                &[mb],
                &[],
                &[],
            )
        }
    }

    /// Record a barrier: what compute shaders, copies and the host wrote before it is seen by
    /// the shaders and copies after it.
    ///
    /// # Safety
    /// `cb` is this context's command buffer, recording, under the caller's lock.
    unsafe fn barrier(&self, cb: vk::CommandBuffer) {
        let mb = vk::MemoryBarrier::default()
            .src_access_mask(
                vk::AccessFlags::SHADER_WRITE
                    | vk::AccessFlags::TRANSFER_WRITE
                    | vk::AccessFlags::HOST_WRITE,
            )
            .dst_access_mask(
                vk::AccessFlags::SHADER_READ
                    | vk::AccessFlags::SHADER_WRITE
                    | vk::AccessFlags::TRANSFER_READ
                    | vk::AccessFlags::TRANSFER_WRITE,
            );
        // SAFETY: as the caller promises.
        unsafe {
            self.memory_barrier(
                cb,
                vk::PipelineStageFlags::COMPUTE_SHADER
                    | vk::PipelineStageFlags::TRANSFER
                    | vk::PipelineStageFlags::HOST,
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                mb,
            )
        };
    }

    /// The pipeline of a shader with specialization constant 1 set to `qt` (compiled once,
    /// on first use; constant 0 is the workgroup size, and shaders that declare no constant 1
    /// ignore it).
    pub fn pipeline(
        &self,
        name: &'static str,
        spv: &[u8],
        bindings: u32,
        qt: u32,
    ) -> Result<Arc<Pipeline>> {
        let mut ps = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = ps.get(&(name, qt)) {
            return Ok(p.clone());
        }
        let d = &self.device;
        let words = ash::util::read_spv(&mut std::io::Cursor::new(spv))
            .map_err(|e| Error::Backend(format!("vulkan: shader {name}: {e}")))?;
        let b: Vec<_> = (0..bindings)
            .map(|i| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(i)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let spec_entry = [0, 1].map(|i| {
            vk::SpecializationMapEntry::default()
                .constant_id(i)
                .offset(4 * i)
                .size(4)
        });
        let mut spec_data = [0u8; 8];
        spec_data[..4].copy_from_slice(&self.wg.to_ne_bytes());
        spec_data[4..].copy_from_slice(&qt.to_ne_bytes());
        let spec = vk::SpecializationInfo::default()
            .map_entries(&spec_entry)
            .data(&spec_data);
        // SAFETY: valid device and create infos that live through each call.
        let p = unsafe {
            let module = d
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None)
                .map_err(vk_err("creating a shader module"))?;
            let set_layout = d
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default()
                        .flags(vk::DescriptorSetLayoutCreateFlags::PUSH_DESCRIPTOR_KHR)
                        .bindings(&b),
                    None,
                )
                .map_err(vk_err("creating a descriptor set layout"))?;
            let pcr = [vk::PushConstantRange::default()
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
                .offset(0)
                .size(128)];
            let sl = [set_layout];
            let layout = d
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default()
                        .set_layouts(&sl)
                        .push_constant_ranges(&pcr),
                    None,
                )
                .map_err(vk_err("creating a pipeline layout"))?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main")
                .specialization_info(&spec);
            let ci = [vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(layout)];
            let pipeline = d
                .create_compute_pipelines(vk::PipelineCache::null(), &ci, None)
                .map_err(|(_, e)| Error::Backend(format!("vulkan: shader {name}: {e}")))?[0];
            Pipeline {
                pipeline,
                layout,
                set_layout,
                module,
                bindings,
            }
        };
        let p = Arc::new(p);
        ps.insert((name, qt), p.clone());
        Ok(p)
    }

    /// Record one dispatch of `groups` workgroups over `bufs` (bound whole, in order) with
    /// the push constants `pc`, after the work recorded before it. It runs at the next
    /// [`Ctx::flush`].
    pub fn dispatch(&self, p: &Pipeline, bufs: &[&RawBuf], pc: &[u32], groups: u64) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        if bufs.len() != p.bindings as usize || pc.len() > 32 {
            return Err(Error::Backend(
                "vulkan: a dispatch with the wrong bindings".into(),
            ));
        }
        let gx = groups.min(65_535) as u32;
        let gy = groups.div_ceil(65_535);
        if gy > 65_535 {
            return Err(Error::Unsupported(format!(
                "vulkan: {groups} workgroups in one dispatch"
            )));
        }
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = bufs
            .iter()
            .map(|b| {
                [vk::DescriptorBufferInfo::default()
                    .buffer(b.buffer)
                    .offset(b.off)
                    .range(vk::WHOLE_SIZE)]
            })
            .collect();
        let writes: Vec<vk::WriteDescriptorSet> = infos
            .iter()
            .enumerate()
            .map(|(i, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_binding(i as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        let pc_bytes: Vec<u8> = pc.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        let d = &self.device;
        // SAFETY: the command buffer is ours under the lock; every handle is valid, and every
        // buffer outlives the submission (dropping one flushes first; op tables are kept).
        unsafe {
            self.begin(&mut cmd)?;
            // each dispatch sees what the ones before it wrote
            self.barrier(cmd.buf);
            d.cmd_bind_pipeline(cmd.buf, vk::PipelineBindPoint::COMPUTE, p.pipeline);
            self.push.cmd_push_descriptor_set(
                cmd.buf,
                vk::PipelineBindPoint::COMPUTE,
                p.layout,
                0,
                &writes,
            );
            d.cmd_push_constants(
                cmd.buf,
                p.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &pc_bytes,
            );
            d.cmd_dispatch(cmd.buf, gx, gy as u32, 1);
        }
        self.count_recorded(cmd)
    }

    /// Start recording into `cmd` unless it is recording already.
    ///
    /// # Safety
    /// The caller holds the lock of `cmd` (it is this context's command buffer).
    unsafe fn begin(&self, cmd: &mut Cmd) -> Result<()> {
        if !cmd.open {
            // SAFETY: the command buffer is ours under the caller's lock and not recording.
            unsafe {
                self.device
                    .begin_command_buffer(
                        cmd.buf,
                        &vk::CommandBufferBeginInfo::default()
                            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                    )
                    .map_err(vk_err("recording"))?;
            }
            cmd.open = true;
        }
        Ok(())
    }

    /// Submit what was recorded and wait for it: before the host reads or writes memory.
    pub fn flush(&self) -> Result<()> {
        let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        let keep = self.submit(&mut cmd)?;
        drop(cmd);
        // buffers dropped outside the lock (their Drop flushes, which finds nothing open)
        drop(keep);
        Ok(())
    }

    fn submit(&self, cmd: &mut Cmd) -> Result<Vec<Arc<RawBuf>>> {
        if !cmd.open {
            return Ok(std::mem::take(&mut cmd.keep));
        }
        let d = &self.device;
        cmd.open = false;
        cmd.recorded = 0;
        cmd.used = 0;
        cmd.staged = 0;
        // SAFETY: the command buffer is ours (the caller holds the lock) and recording.
        unsafe {
            d.end_command_buffer(cmd.buf).map_err(vk_err("recording"))?;
            let bufs = [cmd.buf];
            let submit = [vk::SubmitInfo::default().command_buffers(&bufs)];
            d.queue_submit(self.queue, &submit, cmd.fence)
                .map_err(vk_err("submitting"))?;
            let r = d.wait_for_fences(&[cmd.fence], true, u64::MAX);
            d.reset_fences(&[cmd.fence])
                .map_err(vk_err("resetting a fence"))?;
            d.reset_command_buffer(cmd.buf, vk::CommandBufferResetFlags::empty())
                .map_err(vk_err("resetting a command buffer"))?;
            r.map_err(vk_err("waiting for the device"))?;
        }
        Ok(std::mem::take(&mut cmd.keep))
    }

    /// Memory bandwidth in GB/s as the device sees it in the memory its buffers use: a buffer
    /// of `bytes` copied into another `reps` times (`vkCmdCopyBuffer` reads and writes every
    /// byte), timed from submission to completion, after one copy that touches both.
    pub fn copy_bandwidth(self: &Arc<Self>, bytes: usize, reps: usize) -> Result<f64> {
        let bytes = bytes.min(self.info.max_alloc as usize).max(4) & !3;
        let (a, b) = (self.alloc(bytes)?, self.alloc(bytes)?);
        let d = &self.device;
        let run = |n: usize| -> Result<f64> {
            self.flush()?;
            let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
            let region = [vk::BufferCopy::default().size(bytes as u64)];
            let mb = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::TRANSFER_WRITE);
            // SAFETY: the command buffer is ours under the lock and not recording (flushed);
            // both buffers live until the submission below has completed.
            unsafe {
                self.begin(&mut cmd)?;
                for _ in 0..n {
                    self.memory_barrier(
                        cmd.buf,
                        vk::PipelineStageFlags::TRANSFER,
                        vk::PipelineStageFlags::TRANSFER,
                        mb,
                    );
                    d.cmd_copy_buffer(cmd.buf, a.buffer, b.buffer, &region);
                }
            }
            let t = std::time::Instant::now();
            let keep = self.submit(&mut cmd)?;
            let s = t.elapsed().as_secs_f64();
            drop(cmd);
            drop(keep);
            Ok(s)
        };
        run(1)?;
        let s = run(reps.max(1))?;
        Ok(2.0 * bytes as f64 * reps.max(1) as f64 / s.max(1e-9) / 1e9)
    }

    /// Keep `b` alive until the commands recorded so far have run.
    pub fn keep(&self, b: Arc<RawBuf>) {
        let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        if cmd.open {
            cmd.keep.push(b);
            return;
        }
        drop(cmd);
        // nothing recorded uses it; dropped outside the lock (its Drop flushes)
        drop(b);
    }

    /// Run what was recorded and let go of the arena and kept buffers (they hold this
    /// context, so it can go when the backend does).
    pub fn release(&self) {
        let _ = self.flush();
        let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        let held = (cmd.arena.take(), cmd.down.take());
        drop(cmd);
        drop(held);
    }

    /// Copy `data` into the staging arena for the commands being recorded: the buffer and
    /// the offset in words.
    pub fn stage(self: &Arc<Self>, data: &[u32]) -> Result<(Arc<RawBuf>, u32)> {
        // SAFETY: plain words viewed as their bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, data.len() * 4) };
        let (b, off) = self.stage_bytes(bytes)?;
        Ok((b, (off / 4) as u32))
    }

    /// Copy `data` into the host-visible staging arena (a buffer of its own where it is larger)
    /// for the commands being recorded: the buffer and the byte offset (a multiple of 16).
    fn stage_bytes(self: &Arc<Self>, data: &[u8]) -> Result<(Arc<RawBuf>, usize)> {
        let bytes = data.len();
        if bytes > ARENA {
            // too large for the arena: a buffer of its own, kept until the submission
            let b = Arc::new(self.alloc_host(bytes)?);
            // SAFETY: a new mapping of at least `bytes`.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), b.ptr, bytes) };
            let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
            cmd.keep.push(b.clone());
            return Ok((b, 0));
        }
        let mut cmd = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        if cmd.arena.is_none() {
            cmd.arena = Some(Arc::new(self.alloc_host(ARENA)?));
        }
        if cmd.used + bytes > ARENA {
            let keep = self.submit(&mut cmd)?;
            cmd.keep.extend(keep);
        }
        let off = cmd.used;
        cmd.used = (off + bytes).next_multiple_of(16);
        let a = cmd.arena.clone().expect("the arena was made above");
        // SAFETY: `off..off + bytes` lies in the arena, and no recorded command reads it
        // (the arena is written only past what they use, and reset after a submission).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.ptr.add(off), bytes) };
        Ok((a, off))
    }
}

/// A device's memory types and heaps.
fn mem_props_of(i: &ash::Instance, pd: vk::PhysicalDevice) -> vk::PhysicalDeviceMemoryProperties {
    // SAFETY: a device of this instance.
    unsafe { i.get_physical_device_memory_properties(pd) }
}

/// Whether a device's buffers belong in device-local memory reached through staging copies:
/// a discrete GPU (whose host-visible device memory, where it has any, is a window over the
/// bus), or any device without memory that is both device-local and host-visible.
fn staging_default(info: &DeviceInfo, mp: &vk::PhysicalDeviceMemoryProperties) -> bool {
    let both = vk::MemoryPropertyFlags::DEVICE_LOCAL
        | vk::MemoryPropertyFlags::HOST_VISIBLE
        | vk::MemoryPropertyFlags::HOST_COHERENT;
    let uma = mp.memory_types[..mp.memory_type_count as usize]
        .iter()
        .any(|t| t.property_flags.contains(both));
    info.kind == "discrete GPU" || !uma
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let d = &self.device;
        // SAFETY: nothing runs any more (every op waits), and every buffer holds an Arc of
        // this context, so none is left.
        unsafe {
            let _ = d.device_wait_idle();
            for p in self
                .pipelines
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .values()
            {
                d.destroy_pipeline(p.pipeline, None);
                d.destroy_pipeline_layout(p.layout, None);
                d.destroy_descriptor_set_layout(p.set_layout, None);
                d.destroy_shader_module(p.module, None);
            }
            let cmd = self.cmd.get_mut().unwrap_or_else(|e| e.into_inner());
            cmd.keep.clear();
            cmd.arena = None;
            cmd.down = None;
            d.destroy_fence(cmd.fence, None);
            d.destroy_command_pool(cmd.pool, None);
            d.destroy_device(None);
        }
    }
}
