//! The training step allocates nothing: a counting global allocator watches a whole epoch of
//! steps (dropout, class weights, clipping, weight decay and a schedule all on).

use clap::Parser;
use nn_train::dist::comm::Comm;
use nn_train::train::config::TrainArgs;
use nn_train::train::trainer::Trainer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: ptr came from System.alloc with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// In f32, and in bf16 where the CPU has it (oneDNN's primitives and scratch are made before
/// the first step).
#[test]
fn training_steps_do_not_allocate() {
    let comm = Comm::init().unwrap();
    let every_layer = "32:relu,batchnorm,dropout:0.2,16:tanh,layernorm,3:softmax";
    check_steps(&comm, "fp32", every_layer, "1");
    // Over 65,536 parameters on 2 threads: the update is split over the optimizer's worker.
    check_steps(&comm, "fp32", "256:relu,256:relu,3:softmax", "2");
    match nn_train::engine::onednn::bf16_unit() {
        Ok(_) => {
            check_steps(&comm, "bf16", every_layer, "1");
            check_steps(&comm, "bf16", "256:relu,256:relu,3:softmax", "2");
        }
        Err(_) => {
            nn_train::test_skip::skipped("the bf16 case of the allocation count", nn_train::test_skip::NO_BF16_UNIT)
        }
    }
}

/// Trains one step, then counts the allocations of the epoch's other steps.
fn check_steps(comm: &Comm, precision: &str, layers: &str, threads: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.h5");
    common::write_classification(&data, 500, 12, 3, 4);
    let d = data.display().to_string();
    let args = TrainArgs::parse_from([
        "nn-train",
        "--data",
        &d,
        "--layers",
        layers,
        "--batch-size",
        "24",
        "--class-weight",
        "balanced",
        "--clip-norm",
        "1.0",
        "--weight-decay",
        "0.01",
        "--lr-schedule",
        "cosine",
        "--warmup-epochs",
        "1",
        "--threads",
        threads,
        "--precision",
        precision,
    ]);
    let mut trainer = Trainer::new(comm, args.resolve().unwrap()).unwrap();
    let steps = trainer.start_epoch().unwrap();
    trainer.step(0); // first touch of lazily initialised library state (OpenBLAS buffers)
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for s in 1..steps {
        trainer.step(s);
    }
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    assert_eq!(after - before, 0, "{precision} {layers}: {} allocations in {} steps", after - before, steps - 1);
    // The counter works: an allocation is seen.
    let v = std::hint::black_box(Box::new([1u8; 10]));
    assert!(ALLOCATIONS.load(Ordering::SeqCst) > after && v.len() == 10);
}
