//! Chunk codec throughput: encode and decode of a 1,000-sample chunk shaped like the DCGM feed
//! (10 metrics, one pass per second with millisecond jitter, the same pseudo-random chunk on every
//! run), and the open chunk's life: grown pass by pass to 1,200 samples and encoded after every
//! pass, as the collector rewrites it on every commit, with fresh plans and with reused ones; and
//! encoded every 45 samples instead, so that most commits end inside a pass (as they do when the
//! streamer replays a file sorted by metric, and a GPU's metrics arrive in runs).
//! Run with `cargo bench -p telemetry-store`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use telemetry_store::Chunk;
use test_support::SplitMix;

const METRICS: [&str; 10] = [
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_SM_CLOCK",
];

/// Open chunks are sealed at this many samples (the store's default `chunk_max_samples`).
const OPEN_CHUNK_SAMPLES: usize = 1_200;

/// Samples per commit in the open chunk's life encoded inside passes: what one GPU gets from a
/// commit of the end-to-end bench at full speed.
const SAMPLES_PER_COMMIT: usize = 45;

fn feed_chunk(passes: usize) -> Chunk {
    feed(passes, |_, _| {})
}

/// Builds the feed's chunk pass by pass, handing it to `after_push` after each sample with the
/// number of samples pushed so far.
fn feed(passes: usize, mut after_push: impl FnMut(&mut Chunk, usize)) -> Chunk {
    let mut rng = SplitMix::new(7);
    let mut chunk = Chunk::new();
    let mut power_milliwatts: i64 = 312_457;
    let mut temperature = 41.0;
    for pass in 0..passes {
        let mut ts = 1_752_871_354_000_000 + pass as i64 * 1_000_000 + rng.below(2_000);
        power_milliwatts += rng.below(20_001) - 10_000;
        if rng.below(10) == 0 {
            temperature += if rng.below(2) == 0 { 1.0 } else { -1.0 };
        }
        for (row, metric) in METRICS.iter().enumerate() {
            let value = match row {
                2 => 18_594.0,
                3 => 62_487.0,
                4 => temperature,
                5 => rng.below(101) as f64,
                6 => 2_619.0,
                8 => power_milliwatts as f64 / 1_000.0,
                9 => 1_980.0,
                _ => 0.0,
            };
            chunk.push(metric, ts, value);
            ts += 247 * (4 + rng.below(3));
            let pushed = chunk.len();
            after_push(&mut chunk, pushed);
        }
    }
    chunk
}

/// Runs `work` repeatedly for about `budget` and returns the mean time per call.
fn time_per_call(budget: Duration, mut work: impl FnMut()) -> Duration {
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < budget {
        work();
        calls += 1;
    }
    started.elapsed() / calls.max(1)
}

fn main() {
    let chunk = feed_chunk(100);
    let samples = chunk.len() as f64;
    let encoded = chunk.encode();
    let budget = Duration::from_secs(2);

    let encode = time_per_call(budget, || {
        black_box(black_box(&chunk).encode());
    });
    let decode = time_per_call(budget, || {
        black_box(Chunk::decode(black_box(&encoded)).expect("bench chunk decodes"));
    });
    let query = time_per_call(budget, || {
        black_box(black_box(&chunk).samples_in(i64::MIN, i64::MAX, None));
    });
    let push = time_per_call(budget, || {
        black_box(feed_chunk(100));
    });
    let open_passes = OPEN_CHUNK_SAMPLES / METRICS.len();
    let open_life = |every: usize, reuse: bool| {
        time_per_call(budget, || {
            black_box(feed(open_passes, |chunk, pushed| {
                if pushed % every == 0 {
                    if reuse {
                        black_box(black_box(&mut *chunk).encode_reusing_plans());
                    } else {
                        black_box(black_box(&*chunk).encode());
                    }
                }
            }));
        })
    };
    let open_fresh = open_life(METRICS.len(), false);
    let open_reusing = open_life(METRICS.len(), true);
    let inside_fresh = open_life(SAMPLES_PER_COMMIT, false);
    let inside_reusing = open_life(SAMPLES_PER_COMMIT, true);

    println!(
        "chunk: {} samples, {} bytes, {:.3} bytes/sample",
        chunk.len(),
        encoded.len(),
        encoded.len() as f64 / samples
    );
    for (name, per_call) in [
        ("encode", encode),
        ("decode", decode),
        ("samples_in (all)", query),
        ("build by push", push),
    ] {
        println!(
            "{name:>18}: {:>9.1} us/chunk, {:>6.1} M samples/s",
            per_call.as_secs_f64() * 1e6,
            samples / per_call.as_secs_f64() / 1e6
        );
    }
    println!(
        "open chunk, {open_passes} passes of {} samples, encoded after each pass (build included):",
        METRICS.len()
    );
    let print_life = |name: &str, per_life: Duration| {
        println!(
            "{name:>18}: {:>9.1} us/chunk life, {:>6.2} us per sample added",
            per_life.as_secs_f64() * 1e6,
            per_life.as_secs_f64() * 1e6 / OPEN_CHUNK_SAMPLES as f64
        );
    };
    print_life("fresh plans", open_fresh);
    print_life("reused plans", open_reusing);
    println!(
        "open chunk, encoded every {SAMPLES_PER_COMMIT} samples (most commits end inside a pass):"
    );
    print_life("fresh plans", inside_fresh);
    print_life("reused plans", inside_reusing);
}
