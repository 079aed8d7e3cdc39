//! Search latency of the in-process engine as the collection grows, with and without the
//! keyword filters the curator uses. `cargo run --release -p agent-learning-vector --example search_scaling`

use std::collections::BTreeMap;
use std::time::Instant;

use agent_learning_vector::{EdgeIndex, Filter, Point, VectorIndex};

fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let v: Vec<f32> = (0..dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dim = 384;
    let dir = tempfile::tempdir()?;
    let index = EdgeIndex::open(dir.path())?;
    index
        .ensure_collection("c", dim, &["namespace", "section", "stage"])
        .await?;
    let sizes: Vec<u64> = std::env::args()
        .nth(1)
        .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let mut loaded = 0u64;
    for size in sizes {
        while loaded < size {
            let n = (size - loaded).min(1000);
            let points = (loaded..loaded + n)
                .map(|i| Point {
                    id: uuid::Uuid::from_u128(u128::from(i) + 1),
                    vector: vector(i, dim),
                    payload: BTreeMap::from([
                        ("namespace".to_owned(), "bench".to_owned()),
                        (
                            "section".to_owned(),
                            ["strategy", "mistakes", "facts"][(i % 3) as usize].to_owned(),
                        ),
                        ("stage".to_owned(), "shadow".to_owned()),
                    ]),
                })
                .collect();
            index.upsert("c", points).await?;
            loaded += n;
        }
        let t = Instant::now();
        index.optimize("c").await?;
        let opt = t.elapsed().as_secs_f64();
        for (label, filter) in [
            ("no filter", Filter::default()),
            (
                "ns+section",
                Filter::default()
                    .eq("namespace", "bench")
                    .eq("section", "facts"),
            ),
            (
                "ns+stages",
                Filter::default().eq("namespace", "bench").any(
                    "stage",
                    vec!["shadow".into(), "staging".into(), "production".into()],
                ),
            ),
        ] {
            let t = Instant::now();
            for q in 0..200u64 {
                index
                    .search("c", vector(1_000_000 + q, dim), 64, filter.clone())
                    .await?;
            }
            println!(
                "{size:>7} points (optimized in {opt:.1} s): {label:<11} {:.3} ms/search",
                t.elapsed().as_secs_f64() * 1000.0 / 200.0
            );
        }
    }
    Ok(())
}
