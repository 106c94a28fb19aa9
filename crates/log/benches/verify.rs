//! Issue 2's log targets, measured in one run:
//!
//! - verifying a 1,000,000-entry bundle offline in under 2 s of CPU
//!   (`verify_bundle` on a directory written by `export_bundle`);
//! - an inclusion proof in under 100 µs at 1,000,000 entries
//!   (`Tree::inclusion_proof` and `verify_inclusion`, p50/p99 over random
//!   indices).
//!
//! It also times the parts of verification separately, so a miss shows
//! where the time goes.
//!
//! `cargo bench -p secondkey-log --bench verify` (set `SK_BENCH_ENTRIES` to
//! change the log size).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use secondkey_log::bundle::{export_bundle, verify_bundle, verify_entries};
use secondkey_log::checkpoint::Checkpoint;
use secondkey_log::entry::Entry;
use secondkey_log::merkle::{leaf_hash, verify_inclusion, Tree};
use secondkey_log::note::Signer;

const PROOFS: usize = 100_000;

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete `rusage` into the pointer it is
    // given; the buffer is zero-initialised and of the right type.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: rc == 0 means the kernel filled the struct.
    let u = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Times `f` in wall-clock and CPU time.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (w, c) = (Instant::now(), cpu_time());
    let out = f();
    (out, w.elapsed(), cpu_time() - c)
}

/// An entry shaped like what the gateway logs for an allowed SQL read.
fn sample(i: u64) -> Entry {
    Entry {
        index: i,
        time: "2026-11-22T10:00:00.123Z".into(),
        event: "action.allowed".into(),
        actor: Some("agent:report-bot".into()),
        subjects: BTreeMap::from([("request".into(), format!("req_{i:024x}"))]),
        digest: Some(format!("{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15)),
        payload: serde_json::json!({
            "decision": "allow",
            "action": {"kind": "sql", "operation": "read",
                       "resource": "postgres://analytics/public.orders"},
        }),
    }
}

/// xorshift64*: reproducible indices without a dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    format!(
        "p50 {:>6.2} µs  p99 {:>6.2} µs  max {:>7.2} µs",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        v[v.len() - 1].as_secs_f64() * 1e6
    )
}

fn main() {
    let n: u64 = std::env::var("SK_BENCH_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);

    // Build the log.
    let (entries, w, _) = timed(|| {
        (0..n)
            .map(|i| sample(i).to_bytes().expect("entry"))
            .collect::<Vec<_>>()
    });
    let avg = entries.iter().map(Vec::len).sum::<usize>() as u64 / n;
    println!(
        "built {n} entries (average {avg} bytes) in {:.2} s",
        w.as_secs_f64()
    );
    let tree = Tree::from_leaf_hashes(entries.iter().map(|e| leaf_hash(e)));
    let signer = Signer::generate("bench.secondkey.example/log").expect("signer");
    let note = Checkpoint::new("bench.secondkey.example/log", tree.size(), tree.root())
        .sign(&signer)
        .expect("sign");
    let dir = tempfile::tempdir().expect("tempdir");
    let (report, w, _) = timed(|| export_bundle(dir.path(), &note, &entries, &tree));
    let report = report.expect("export");
    println!(
        "exported bundle: {} entry bundles, {} hash tiles in {:.2} s",
        report.entry_bundles,
        report.hash_tiles,
        w.as_secs_f64()
    );

    // 1. Offline verification of the bundle, as `secondkey log verify` does.
    let verifier = signer.verifier();
    let (res, wall, cpu) = timed(|| verify_bundle(dir.path(), &verifier, None));
    let res = res.expect("verify");
    assert_eq!(res.size, n);
    let verdict = if cpu.as_secs_f64() < 2.0 {
        "MET"
    } else {
        "MISSED"
    };
    println!(
        "verify_bundle({n}): CPU {:.2} s, wall {:.2} s  [target < 2 s CPU: {verdict}]",
        cpu.as_secs_f64(),
        wall.as_secs_f64()
    );

    // Where verification time goes, each part alone over the same entries.
    let (_, _, c_decode) = timed(|| {
        for e in &entries {
            let _ = std::hint::black_box(Entry::from_bytes(e).expect("decode"));
        }
    });
    let (_, _, c_parse) = timed(|| {
        for e in &entries {
            let v: Entry = serde_json::from_slice(e).expect("parse");
            std::hint::black_box(v);
        }
    });
    let (_, _, c_hash) = timed(|| {
        for e in &entries {
            std::hint::black_box(leaf_hash(e));
        }
    });
    let leaves: Vec<_> = entries.iter().map(|e| leaf_hash(e)).collect();
    let (_, _, c_tree) = timed(|| std::hint::black_box(Tree::from_leaf_hashes(leaves)));
    let cp = Checkpoint::open(&note, &verifier).expect("open");
    let (r, _, c_mem) = timed(|| verify_entries(&cp, &entries));
    r.expect("verify_entries");
    println!("  breakdown (CPU s): Entry::from_bytes {:.2} (of which serde_json parse {:.2}, canonical re-encode ~{:.2}), leaf hashes {:.2}, tree {:.2}; verify_entries in memory {:.2}",
        c_decode.as_secs_f64(), c_parse.as_secs_f64(),
        (c_decode.saturating_sub(c_parse)).as_secs_f64(),
        c_hash.as_secs_f64(), c_tree.as_secs_f64(), c_mem.as_secs_f64());

    // 2. Inclusion proofs at this size, random indices.
    let root = tree.root();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut gen = Vec::with_capacity(PROOFS);
    let mut ver = Vec::with_capacity(PROOFS);
    let mut both = Vec::with_capacity(PROOFS);
    for _ in 0..PROOFS {
        let i = rng.below(n);
        let leaf = tree.leaf(i).expect("leaf");
        let t0 = Instant::now();
        let proof = tree.inclusion_proof(i, n).expect("proof");
        let t1 = Instant::now();
        verify_inclusion(&leaf, i, n, std::hint::black_box(&proof), &root).expect("verifies");
        let t2 = Instant::now();
        gen.push(t1 - t0);
        ver.push(t2 - t1);
        both.push(t2 - t0);
    }
    println!("inclusion proofs at size {n}, {PROOFS} random indices:");
    println!("  Tree::inclusion_proof      {}", percentiles(gen));
    println!("  verify_inclusion           {}", percentiles(ver));
    let mut sorted = both.clone();
    sorted.sort_unstable();
    let p99 = sorted[PROOFS * 99 / 100];
    let verdict = if p99 < Duration::from_micros(100) {
        "MET"
    } else {
        "MISSED"
    };
    println!(
        "  proof + verify             {}  [target < 100 µs: {verdict}]",
        percentiles(both)
    );
}
