//! Qwen3.5's linear-attention layers keep a fixed-size recurrent state per session: a
//! session's memory grows with the context only in the full-attention layers' KV cache, a
//! long sequence (4000 tokens) runs with no growth between decode steps, and reset and
//! truncation clear the state (a sequence started again gives the same logits).
//!
//! Memory is measured by a counting global allocator: live heap bytes of this process, and
//! the bytes allocated by the calling thread (a session's own allocations, which the worker
//! threads and the other test of this file cannot disturb). The tests take one lock so that
//! neither allocates while the other measures the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use flashstream_formats::gguf::GgufModel;
use flashstream_formats::ModelConfig;
use flashstream_runtime::memory::kv_bytes_per_position;
use flashstream_runtime::model::{LogitsWanted, Model, ModelOptions};
use flashstream_scheduler::ResidentSource;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
/// One test at a time measures the process.
static SERIAL: Mutex<()> = Mutex::new(());

thread_local! {
    /// Bytes allocated minus freed by this thread (const-initialised: no allocation).
    static MINE: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    LIVE.fetch_add(delta, Ordering::Relaxed);
    // `try_with`: a thread being torn down may still free memory.
    let _ = MINE.try_with(|c| c.set(c.get() + delta));
}

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size() as i64);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as i64));
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count(new as i64 - l.size() as i64);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn mine() -> i64 {
    MINE.with(Cell::get)
}

fn model(name: &str) -> (Model, ModelConfig) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/models")
        .join(name);
    let gguf = GgufModel::open(&path).unwrap();
    let config = ModelConfig::from_model(&gguf).unwrap();
    let opts = ModelOptions {
        threads: 2,
        ..ModelOptions::default()
    };
    let m = Model::new(&gguf, Box::new(ResidentSource::load(&gguf).unwrap()), &opts).unwrap();
    (m, config)
}

fn tokens(n: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 131 + salt * 7 + 3) % 256) as u32)
        .collect()
}

#[test]
fn session_memory_grows_only_in_the_attention_layers_kv() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (m, c) = model("rand-qwen35-q8.gguf");
    let ssm = c.ssm.as_ref().unwrap();
    assert_eq!((c.n_layer, ssm.n_recurrent(), c.n_kv_layers()), (8, 6, 2));
    // Only the 2 full-attention layers have a cache: 2 layers × 1 KV head × (64 + 64) f16.
    let per_pos = kv_bytes_per_position(&c);
    assert_eq!(per_pos, 2 * 128 * 2);
    // Per linear layer: 3 past inputs of 512 conv channels (4 q and 4 k heads of 32, 8 v
    // heads of 32), 8 value heads of 32×32 f32.
    assert_eq!(c.recurrent_state_bytes(), 6 * (3 * 512 + 8 * 32 * 32) * 4);

    let size_of_session = |n_ctx: usize| {
        let before = mine();
        let s = m.session(n_ctx).unwrap();
        let bytes = mine() - before;
        assert_eq!(
            s.recurrent_state().unwrap().bytes(),
            c.recurrent_state_bytes()
        );
        drop(s);
        bytes
    };
    let (small, large) = (size_of_session(512), size_of_session(4096));
    assert_eq!(large - small, (4096 - 512) * per_pos as i64);
    eprintln!(
        "qwen35 session: {small} bytes at 512 positions, {large} at 4096 ({per_pos} per position, \
         all KV of the 2 attention layers); recurrent state {} bytes at any length",
        c.recurrent_state_bytes()
    );

    // A 4000-token sequence: after the prompt, decode steps allocate nothing that stays.
    let mut s = m.session(4096).unwrap();
    let prompt = tokens(3990, 1);
    s.eval(&prompt, LogitsWanted::Last).unwrap();
    let after_prompt = live();
    let mut last = Vec::new();
    for t in 0..10u32 {
        last = s.eval(&[t * 13 % 256], LogitsWanted::Last).unwrap();
        assert!(last.iter().all(|x| x.is_finite()));
    }
    assert_eq!(s.pos(), 4000);
    let after_decode = live();
    assert_eq!(
        after_decode - after_prompt,
        last.capacity() as i64 * 4,
        "decode steps at positions 3990..4000 grew the heap beyond the last logits"
    );
    eprintln!(
        "qwen35 at 4000 positions: live heap {after_prompt} bytes after the prompt, \
         {after_decode} after 10 decode steps"
    );
}

#[test]
fn reset_and_truncate_clear_the_recurrent_state() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["rand-qwen35-q8.gguf", "rand-qwen35moe-q4k.gguf"] {
        let (m, _) = model(name);
        let a = tokens(12, 2);
        let b = tokens(9, 5);
        let mut fresh = m.session(64).unwrap();
        let want = fresh.eval(&b, LogitsWanted::All).unwrap();

        let mut s = m.session(64).unwrap();
        s.eval(&a, LogitsWanted::Last).unwrap();
        s.reset();
        assert_eq!(
            s.eval(&b, LogitsWanted::All).unwrap(),
            want,
            "{name}: reset"
        );

        // Going back is not possible with a recurrent state: truncate starts over.
        assert_eq!(s.truncate(4), 0, "{name}");
        assert_eq!(
            s.eval(&b, LogitsWanted::All).unwrap(),
            want,
            "{name}: truncate"
        );
        // Truncating at the end keeps everything.
        assert_eq!(s.truncate(100), b.len());
        assert_eq!(s.pos(), b.len());

        // The state carries the sequence: the same tokens after a different prefix differ.
        let mut other = m.session(64).unwrap();
        other.eval(&a, LogitsWanted::Last).unwrap();
        assert_ne!(other.eval(&b, LogitsWanted::All).unwrap(), want, "{name}");
    }
}
