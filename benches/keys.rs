//! Key building: `counter_key` for one to five entries, with and without a prefix, for a
//! plain per-window counter.
//!
//! `cargo bench --bench keys`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::store::keys::counter_key;

fn keys(c: &mut Criterion) {
    let entries = [
        ("tenant_id", "acme"),
        ("model", "claude-sonnet"),
        ("session_id", "s-123456"),
        ("request_id", "*"),
        ("token_type", "output"),
    ];
    let mut group = c.benchmark_group("counter_key");
    for n in [1, 3, 5] {
        for (name, prefix) in [("no_prefix", ""), ("prefix", "tollgate-prod:")] {
            group.bench_function(format!("{n}_entries/{name}"), |b| {
                b.iter(|| {
                    black_box(counter_key(
                        black_box(prefix),
                        black_box("ai-gateway"),
                        black_box(&entries[..n]).iter().copied(),
                        black_box(""),
                        black_box(Some(1_800_000_000)),
                    ))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
