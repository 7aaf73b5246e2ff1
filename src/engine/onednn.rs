//! oneDNN (Debian's `libdnnl`, 2.6): the only module that calls it. Matrix products with bf16
//! inputs and f32 accumulation and output, on the CPU's matrix units (AMX) or its bf16 vector
//! instructions (AVX512-BF16), for `--precision bf16`.
//!
//! A [`Matmul`] is one oneDNN matmul primitive for one fixed shape: created (and JIT-compiled)
//! once, then executed any number of times on caller-owned buffers, with its scratch memory
//! passed in by the caller, so an execution allocates nothing. oneDNN runs on GNU OpenMP; its
//! threads per rank are set by [`set_threads`].
//!
//! Which CPU features count is decided here, explicitly: bf16 is offered only when oneDNN's
//! effective ISA has AMX or AVX512-BF16 ([`bf16_unit`]); anything less would emulate bf16 and
//! run slower than f32. Two environment variables serve tests and measurements:
//! `NN_TRAIN_HIDE_BF16=1` makes the CPU look as if it had neither (to test the error), and
//! `NN_TRAIN_HIDE_AMX=1` caps oneDNN at AVX512-BF16 (to measure a CPU without AMX).

use crate::{Error, Result};
use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

#[allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code, clippy::all)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/dnnl_sys.rs"));
}

extern "C" {
    /// GNU OpenMP (libgomp, oneDNN's threading runtime): threads of the next parallel regions
    /// started by the calling thread.
    fn omp_set_num_threads(n: c_int);
}

/// Environment variable that hides AMX and AVX512-BF16 from the check (a test knob).
pub const HIDE_BF16_VAR: &str = "NN_TRAIN_HIDE_BF16";
/// Environment variable that caps oneDNN at AVX512-BF16 (measures a CPU without AMX).
pub const HIDE_AMX_VAR: &str = "NN_TRAIN_HIDE_AMX";

/// The bf16 hardware oneDNN's kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Unit {
    /// Advanced Matrix Extensions (Intel Sapphire Rapids and newer): tile multiply units.
    Amx,
    /// AVX512-BF16 dot-product instructions (Intel Cooper Lake, AMD Zen 4 and newer).
    Avx512Bf16,
}

impl Bf16Unit {
    /// The unit's name, for the start-up summary.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Unit::Amx => "AMX",
            Bf16Unit::Avx512Bf16 => "AVX512-BF16",
        }
    }
}

fn env_set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// oneDNN's name for an ISA value of `dnnl_get_effective_cpu_isa`.
fn isa_name(isa: sys::dnnl_cpu_isa_t) -> &'static str {
    match isa {
        sys::dnnl_cpu_isa_avx512_core_amx => "avx512_core_amx",
        sys::dnnl_cpu_isa_avx512_core_bf16 => "avx512_core_bf16",
        sys::dnnl_cpu_isa_avx512_core_vnni => "avx512_core_vnni",
        sys::dnnl_cpu_isa_avx512_core => "avx512_core",
        sys::dnnl_cpu_isa_avx2_vnni => "avx2_vnni",
        sys::dnnl_cpu_isa_avx2 => "avx2",
        sys::dnnl_cpu_isa_avx => "avx",
        sys::dnnl_cpu_isa_sse41 => "sse41",
        _ => "below sse41",
    }
}

/// The ISA oneDNN's kernels use on this CPU ("avx512_core_amx", ...), after the
/// `NN_TRAIN_HIDE_AMX` cap.
pub fn effective_isa() -> &'static str {
    isa_name(checked_isa())
}

fn checked_isa() -> sys::dnnl_cpu_isa_t {
    static ISA: OnceLock<sys::dnnl_cpu_isa_t> = OnceLock::new();
    *ISA.get_or_init(|| {
        if env_set(HIDE_AMX_VAR) {
            // SAFETY: called once, before any primitive exists (the cap only works then);
            // a failure leaves the ISA uncapped, which the query below reports.
            unsafe { sys::dnnl_set_max_cpu_isa(sys::dnnl_cpu_isa_avx512_core_bf16) };
        }
        // SAFETY: a query without arguments.
        unsafe { sys::dnnl_get_effective_cpu_isa() }
    })
}

/// The bf16 unit this CPU offers oneDNN, or the one-line `--precision` error saying that it
/// has none (emulated bf16 would be slower than f32).
pub fn bf16_unit() -> Result<Bf16Unit> {
    let isa = checked_isa();
    let hidden = env_set(HIDE_BF16_VAR);
    let unit = match isa {
        _ if hidden => None,
        sys::dnnl_cpu_isa_avx512_core_amx => Some(Bf16Unit::Amx),
        sys::dnnl_cpu_isa_avx512_core_bf16 => Some(Bf16Unit::Avx512Bf16),
        _ => None,
    };
    unit.ok_or_else(|| {
        let why = if hidden {
            format!("hidden by {HIDE_BF16_VAR}, a test knob")
        } else {
            format!("oneDNN's best ISA here: {}", isa_name(isa))
        };
        Error::flag(
            "precision",
            format!(
                "bf16 needs a CPU with AMX or AVX512-BF16 (e.g. Intel Sapphire Rapids or Cooper Lake, AMD Zen 4) and this one has neither ({why}); emulated bf16 would be slower than fp32, so use --precision fp32"
            ),
        )
    })
}

/// Threads for oneDNN's next products on this thread (OpenMP), matching the BLAS threads.
pub fn set_threads(n: usize) {
    // SAFETY: libgomp is linked (oneDNN's runtime); the call takes a plain int.
    unsafe { omp_set_num_threads(n.max(1) as c_int) }
}

/// The process's CPU engine and its in-order stream, created once.
struct Context {
    engine: sys::dnnl_engine_t,
    stream: sys::dnnl_stream_t,
}

// SAFETY: the handles are only used by the thread that runs the model (oneDNN objects may be
// shared between threads; streams executing concurrently are the caller's concern, and
// nn-train executes from one thread).
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

fn check(status: sys::dnnl_status_t, what: &str) -> Result<()> {
    if status == sys::dnnl_success {
        Ok(())
    } else {
        Err(Error::flag("precision", format!("oneDNN failed to {what} (status {status})")))
    }
}

fn context() -> Result<&'static Context> {
    static CONTEXT: OnceLock<std::result::Result<Context, String>> = OnceLock::new();
    let made = CONTEXT.get_or_init(|| {
        checked_isa(); // apply the NN_TRAIN_HIDE_AMX cap before anything else
        let mut engine = std::ptr::null_mut();
        let mut stream = std::ptr::null_mut();
        // SAFETY: out-pointers to locals; index 0 is the only CPU engine.
        check(unsafe { sys::dnnl_engine_create(&mut engine, sys::dnnl_cpu, 0) }, "create its CPU engine")
            .map_err(|e| e.to_string())?;
        // SAFETY: engine was just created; out-pointer to a local.
        let status = unsafe { sys::dnnl_stream_create(&mut stream, engine, sys::dnnl_stream_default_flags) };
        check(status, "create a stream").map_err(|e| e.to_string())?;
        Ok(Context { engine, stream })
    });
    made.as_ref().map_err(|m| Error::flag("precision", m.clone()))
}

/// The shape of one product C = op(A) op(B) (+ bias), all row-major in memory: A holds
/// `m x k` bf16 values (stored `k x m` when `trans_a`), B `k x n` bf16 (stored `n x k` when
/// `trans_b`), C `m x n` f32, bias `n` f32 added to every row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// A is stored transposed (k x m).
    pub trans_a: bool,
    /// B is stored transposed (n x k).
    pub trans_b: bool,
    /// A bias row (n,) is added to C.
    pub bias: bool,
}

/// One created matmul primitive and the memory objects bound to it at each execution.
pub struct Matmul {
    /// The product it computes.
    pub shape: Shape,
    primitive: Primitive,
    src: Memory,
    weights: Memory,
    bias: Option<Memory>,
    dst: Memory,
    /// B's packed layout, when it has one.
    packing: Option<Packing>,
}

/// A created primitive of any kind, its scratch memory (passed in by the caller at each
/// execution, so executions never allocate) and oneDNN's name for its implementation.
struct Primitive {
    prim: sys::dnnl_primitive_t,
    scratch: Option<Memory>,
    scratch_bytes: usize,
    implementation: String,
}

/// A memory object: a descriptor bound to a caller's buffer before each execution.
struct Memory(sys::dnnl_memory_t);

impl Memory {
    fn new(md: *const sys::dnnl_memory_desc_t) -> Result<Memory> {
        let ctx = context()?;
        let mut mem = std::ptr::null_mut();
        // SAFETY: md is valid; a null handle means "no buffer yet" (set before each run).
        let status = unsafe { sys::dnnl_memory_create(&mut mem, md, ctx.engine, std::ptr::null_mut()) };
        check(status, "create a memory object")?;
        Ok(Memory(mem))
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: created by Memory::new, destroyed once.
        unsafe { sys::dnnl_memory_destroy(self.0) };
    }
}

impl Primitive {
    /// Creates the primitive `create` describes (given attributes that leave the scratch
    /// memory to the caller); `what` names it in errors.
    fn new(
        what: &str,
        create: impl FnOnce(*mut sys::dnnl_primitive_desc_t, sys::dnnl_primitive_attr_t) -> sys::dnnl_status_t,
    ) -> Result<Primitive> {
        let mut attr = std::ptr::null_mut();
        // SAFETY: out-pointer to a local.
        check(unsafe { sys::dnnl_primitive_attr_create(&mut attr) }, "create attributes")?;
        // SAFETY: attr was just created.
        let set = unsafe { sys::dnnl_primitive_attr_set_scratchpad_mode(attr, sys::dnnl_scratchpad_mode_user) };
        let mut pd = std::ptr::null_mut();
        let made = check(set, "set the scratchpad mode").and_then(|_| check(create(&mut pd, attr), what));
        // SAFETY: the descriptor keeps its own copy of the attributes.
        unsafe { sys::dnnl_primitive_attr_destroy(attr) };
        made?;
        let primitive = Primitive::from_desc(pd);
        // SAFETY: the primitive and memory objects no longer need the descriptor.
        unsafe { sys::dnnl_primitive_desc_destroy(pd) };
        primitive
    }

    fn from_desc(pd: sys::dnnl_primitive_desc_t) -> Result<Primitive> {
        let mut info: *const std::os::raw::c_char = std::ptr::null();
        // SAFETY: impl_info_str writes a pointer to a string owned by pd.
        let implementation = if unsafe {
            sys::dnnl_primitive_desc_query(pd, sys::dnnl_query_impl_info_str, 0, &mut info as *mut _ as *mut c_void)
        } == sys::dnnl_success
            && !info.is_null()
        {
            // SAFETY: a NUL-terminated string that lives as long as pd.
            unsafe { CStr::from_ptr(info) }.to_string_lossy().into_owned()
        } else {
            "unknown".to_string()
        };
        // SAFETY: pd is valid; the returned descriptor is owned by pd.
        let scratch_md = unsafe { sys::dnnl_primitive_desc_query_md(pd, sys::dnnl_query_scratchpad_md, 0) };
        let scratch_bytes = if scratch_md.is_null() {
            0
        } else {
            // SAFETY: scratch_md points into pd, which is alive.
            unsafe { sys::dnnl_memory_desc_get_size(scratch_md) }
        };
        let scratch = if scratch_bytes == 0 { None } else { Some(Memory::new(scratch_md)?) };
        let mut prim = std::ptr::null_mut();
        // SAFETY: pd is valid; the primitive keeps what it needs of it.
        check(unsafe { sys::dnnl_primitive_create(&mut prim, pd) }, "create a primitive")?;
        Ok(Primitive { prim, scratch, scratch_bytes, implementation })
    }

    /// Runs the primitive on the buffers bound to `args` (argument, memory, buffer) and
    /// `scratch` (at least `scratch_bytes`), and waits for it.
    ///
    /// # Safety
    /// Each buffer is at least as long as its memory's descriptor and lives across the call;
    /// the primitive writes only its outputs and the scratch, which nothing else accesses.
    unsafe fn execute(&self, args: &[(u32, &Memory, *mut c_void)], scratch: &mut [u8]) {
        assert!(scratch.len() >= self.scratch_bytes && args.len() < 8);
        let ctx = context().expect("a primitive exists, so the context was created");
        let mut bound = [sys::dnnl_exec_arg_t { arg: 0, memory: std::ptr::null_mut() }; 8];
        let scratch_arg = self.scratch.as_ref().map(|m| (sys::DNNL_ARG_SCRATCHPAD, m, scratch.as_mut_ptr().cast()));
        let mut n = 0;
        for &(arg, mem, ptr) in args.iter().chain(scratch_arg.as_ref()) {
            // SAFETY: mem belongs to this primitive; the caller's contract for ptr.
            let status = unsafe { sys::dnnl_memory_set_data_handle(mem.0, ptr) };
            assert_eq!(status, sys::dnnl_success, "oneDNN rejected a buffer");
            bound[n] = sys::dnnl_exec_arg_t { arg: arg as c_int, memory: mem.0 };
            n += 1;
        }
        // SAFETY: every argument is bound to a live buffer (the caller's contract); the wait
        // ends all use of them.
        unsafe {
            let status = sys::dnnl_primitive_execute(self.prim, ctx.stream, n as c_int, bound.as_ptr());
            assert_eq!(status, sys::dnnl_success, "oneDNN failed to run a primitive");
            sys::dnnl_stream_wait(ctx.stream);
        }
    }
}

impl Drop for Primitive {
    fn drop(&mut self) {
        // SAFETY: created by Primitive::from_desc, destroyed once.
        unsafe { sys::dnnl_primitive_destroy(self.prim) };
    }
}

fn desc(
    rows: usize,
    cols: usize,
    stored_transposed: bool,
    dt: sys::dnnl_data_type_t,
) -> Result<sys::dnnl_memory_desc_t> {
    let dims = dims2(rows, cols);
    let mut strides: sys::dnnl_dims_t = [0; 12];
    (strides[0], strides[1]) = if stored_transposed { (1, rows as i64) } else { (cols as i64, 1) };
    // SAFETY: all-zero is a valid (empty) descriptor for the call to fill in.
    let mut md: sys::dnnl_memory_desc_t = unsafe { std::mem::zeroed() };
    // SAFETY: md is a valid out-pointer; dims and strides hold 12 entries of which 2 are read.
    let status = unsafe { sys::dnnl_memory_desc_init_by_strides(&mut md, 2, dims.as_ptr(), dt, strides.as_ptr()) };
    check(status, "describe a matrix")?;
    Ok(md)
}

/// oneDNN's packed layout of a (k, n) bf16 weight matrix, the B of a forward product, in which
/// its AMX and AVX512-BF16 kernels read B without repacking it at every call ("BA16a64b2a":
/// columns in blocks of `n_block`, each block a column of row blocks of 2 `k_pairs` rows, in
/// which the two rows of each pair are interleaved value by value, so that a 32-bit lane holds
/// the pair a dot-product instruction multiplies). Rows are padded to a multiple of
/// 2 `k_pairs` and columns to a multiple of `n_block`, with zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packing {
    /// Rows (the product's k).
    pub k: usize,
    /// Columns (the product's n).
    pub n: usize,
    /// Row pairs per row block.
    pub k_pairs: usize,
    /// Columns per column block.
    pub n_block: usize,
    /// Values from one row block to the next.
    pub k_stride: usize,
    /// Values from one column block to the next.
    pub n_stride: usize,
    /// Values of the whole packed matrix, padding included.
    pub len: usize,
}

impl Packing {
    /// Where value (row, col) of the matrix is stored, in values from the packed start. (The
    /// blocks are powers of two, so this takes shifts and masks, no division.)
    #[inline(always)]
    pub fn offset(&self, row: usize, col: usize) -> usize {
        let (pairs_shift, block_shift) = (self.k_pairs.trailing_zeros(), self.n_block.trailing_zeros());
        (row >> (pairs_shift + 1)) * self.k_stride
            + (col >> block_shift) * self.n_stride
            + (((row >> 1) & (self.k_pairs - 1)) << (block_shift + 1))
            + ((col & (self.n_block - 1)) << 1)
            + (row & 1)
    }
}

/// A weight matrix's packed layout as oneDNN describes it (to create products that read it)
/// and as nn-train writes it ([`Packing`]).
pub struct PackedWeights {
    md: sys::dnnl_memory_desc_t,
    /// The layout.
    pub packing: Packing,
}

/// The layout oneDNN's forward product (m, k) x (k, n) + bias prefers for its weights, when it
/// is a packed layout of the kind [`Packing`] describes; None when it prefers them plain or
/// in a layout nn-train does not write (the product then reads them plain).
pub fn packed_weights(m: usize, k: usize, n: usize) -> Result<Option<PackedWeights>> {
    let a = desc(m, k, false, sys::dnnl_bf16)?;
    let c = desc(m, n, false, sys::dnnl_f32)?;
    let bias = desc(1, n, false, sys::dnnl_f32)?;
    // SAFETY: all-zero is a valid (empty) descriptor for the call to fill in.
    let mut any: sys::dnnl_memory_desc_t = unsafe { std::mem::zeroed() };
    let dims = dims2(k, n);
    // SAFETY: out-pointer to a local; dims holds 12 entries of which 2 are read.
    let status = unsafe {
        sys::dnnl_memory_desc_init_by_tag(&mut any, 2, dims.as_ptr(), sys::dnnl_bf16, sys::dnnl_format_tag_any)
    };
    check(status, "describe a matrix")?;
    let op = matmul_desc(&a, &any, Some(&bias), &c)?;
    let ctx = context()?;
    let mut pd = std::ptr::null_mut();
    // SAFETY: op is initialised; no attributes; the engine lives for the process.
    let status = unsafe {
        sys::dnnl_primitive_desc_create(
            &mut pd,
            &op as *const _ as *const c_void,
            std::ptr::null(),
            ctx.engine,
            std::ptr::null(),
        )
    };
    check(status, "find a matmul implementation")?;
    // SAFETY: pd is valid; the returned descriptor is owned by pd, copied out before its end.
    let md = unsafe { *sys::dnnl_primitive_desc_query_md(pd, sys::dnnl_query_weights_md, 0) };
    // SAFETY: made above, destroyed once.
    unsafe { sys::dnnl_primitive_desc_destroy(pd) };
    Ok(packing_of(&md, k, n).map(|packing| PackedWeights { md, packing }))
}

/// `md`'s layout as a [`Packing`] of a (k, n) matrix, when it is one.
fn packing_of(md: &sys::dnnl_memory_desc_t, k: usize, n: usize) -> Option<Packing> {
    if md.format_kind != sys::dnnl_blocked || md.offset0 != 0 || md.data_type != sys::dnnl_bf16 {
        return None;
    }
    // SAFETY: format_kind says the union holds the blocking description.
    let b = unsafe { md.format_desc.blocking };
    let blocks: Vec<(i64, i64)> = (0..b.inner_nblks as usize).map(|i| (b.inner_blks[i], b.inner_idxs[i])).collect();
    let [(k_pairs, 0), (n_block, 1), (2, 0)] = blocks[..] else { return None };
    if !(k_pairs as u64).is_power_of_two() || !(n_block as u64).is_power_of_two() {
        return None;
    }
    // SAFETY: a valid descriptor.
    let bytes = unsafe { sys::dnnl_memory_desc_get_size(md) };
    let packing = Packing {
        k,
        n,
        k_pairs: k_pairs as usize,
        n_block: n_block as usize,
        k_stride: b.strides[0] as usize,
        n_stride: b.strides[1] as usize,
        len: bytes / 2,
    };
    // Every value inside the allocation, as the formula places it.
    let last = packing.offset(k.next_multiple_of(2 * packing.k_pairs) - 1, n.next_multiple_of(packing.n_block) - 1);
    (last < packing.len).then_some(packing)
}

fn dims2(rows: usize, cols: usize) -> sys::dnnl_dims_t {
    let mut dims: sys::dnnl_dims_t = [0; 12];
    dims[0] = rows as i64;
    dims[1] = cols as i64;
    dims
}

impl Matmul {
    /// Creates the primitive (oneDNN JIT-compiles its kernel here, not at execution).
    pub fn new(shape: Shape) -> Result<Matmul> {
        let b = desc(shape.k, shape.n, shape.trans_b, sys::dnnl_bf16)?;
        Matmul::with_weights(shape, b, None)
    }

    /// A forward product (no transposes) whose weights B are stored in `packed`'s layout.
    pub fn new_packed(shape: Shape, packed: &PackedWeights) -> Result<Matmul> {
        assert!(!shape.trans_a && !shape.trans_b && (packed.packing.k, packed.packing.n) == (shape.k, shape.n));
        Matmul::with_weights(shape, packed.md, Some(packed.packing))
    }

    fn with_weights(shape: Shape, b: sys::dnnl_memory_desc_t, packing: Option<Packing>) -> Result<Matmul> {
        let Shape { m, k, n, trans_a, bias, .. } = shape;
        let a = desc(m, k, trans_a, sys::dnnl_bf16)?;
        let c = desc(m, n, false, sys::dnnl_f32)?;
        let bias_md = desc(1, n, false, sys::dnnl_f32)?;
        let primitive = matmul_primitive(&a, &b, bias.then_some(&bias_md), &c)?;
        Ok(Matmul {
            shape,
            primitive,
            src: Memory::new(&a)?,
            weights: Memory::new(&b)?,
            bias: if bias { Some(Memory::new(&bias_md)?) } else { None },
            dst: Memory::new(&c)?,
            packing,
        })
    }

    /// Bytes of scratch memory an execution needs.
    pub fn scratch_bytes(&self) -> usize {
        self.primitive.scratch_bytes
    }

    /// oneDNN's implementation name, e.g. "brg:avx512_core_amx_bf16".
    pub fn implementation(&self) -> &str {
        &self.primitive.implementation
    }

    /// c = op(a) op(b) (+ bias), overwriting c. Lengths: a m*k, b k*n (or the packed
    /// length), c m*n, bias n, scratch at least [`Matmul::scratch_bytes`] (64-byte alignment
    /// is best). Allocates nothing.
    pub fn run(&self, a: &[u16], b: &[u16], bias: Option<&[f32]>, c: &mut [f32], scratch: &mut [u8]) {
        let Shape { m, k, n, .. } = self.shape;
        let b_len = self.packing.map_or(k * n, |p| p.len);
        assert!(a.len() >= m * k && b.len() >= b_len && c.len() >= m * n);
        assert_eq!(bias.is_some(), self.shape.bias, "bias given to a matmul created without one, or missing");
        let mut args = [
            (sys::DNNL_ARG_SRC, &self.src, a.as_ptr() as *mut c_void),
            (sys::DNNL_ARG_WEIGHTS, &self.weights, b.as_ptr() as *mut c_void),
            (sys::DNNL_ARG_DST, &self.dst, c.as_mut_ptr().cast()),
            (sys::DNNL_ARG_DST, &self.dst, std::ptr::null_mut()),
        ];
        let mut used = 3;
        if let (Some(bias), Some(mem)) = (bias, &self.bias) {
            assert!(bias.len() >= n);
            args[3] = (sys::DNNL_ARG_BIAS, mem, bias.as_ptr() as *mut c_void);
            used = 4;
        }
        // SAFETY: every buffer is as long as its descriptor (checked above) and lives across
        // the call; oneDNN reads a, b and bias (never writes them, despite the mutable pointer
        // type) and writes c and scratch, which are borrowed mutably for the call.
        unsafe { self.primitive.execute(&args[..used], scratch) }
    }
}

/// A matmul primitive for these descriptors.
fn matmul_primitive(
    a: &sys::dnnl_memory_desc_t,
    b: &sys::dnnl_memory_desc_t,
    bias: Option<&sys::dnnl_memory_desc_t>,
    c: &sys::dnnl_memory_desc_t,
) -> Result<Primitive> {
    let ctx = context()?;
    let op = matmul_desc(a, b, bias, c)?;
    Primitive::new("find a matmul implementation", |pd, attr| {
        // SAFETY: op and attr are initialised; the engine lives for the process.
        unsafe {
            sys::dnnl_primitive_desc_create(pd, &op as *const _ as *const c_void, attr, ctx.engine, std::ptr::null())
        }
    })
}

fn matmul_desc(
    a: &sys::dnnl_memory_desc_t,
    b: &sys::dnnl_memory_desc_t,
    bias: Option<&sys::dnnl_memory_desc_t>,
    c: &sys::dnnl_memory_desc_t,
) -> Result<sys::dnnl_matmul_desc_t> {
    // SAFETY: zeroed is the state the init call expects to overwrite.
    let mut op: sys::dnnl_matmul_desc_t = unsafe { std::mem::zeroed() };
    let bias_ptr = bias.map_or(std::ptr::null(), |b| b as *const _);
    // SAFETY: all descriptors live across the call; a null bias means none.
    check(unsafe { sys::dnnl_matmul_desc_init(&mut op, a, b, bias_ptr, c) }, "describe a matmul")?;
    Ok(op)
}
