//! Merges on an in-process 3-node cluster: two sources aggregate into overlapping rows, replay
//! part of their input as after a crash, re-send the overlaps from the rows' marks, and end with the
//! rows a straightforward computation gives, across a region split; bad merges are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tonic::Code;
use weir_client::{Client, MergeOp, RowMerge, Table, TableSchema, Value};
use weir_tests::{wait_until, InProcessCluster};

/// Merged rows have keys 0, 10, ... 590; filler rows sit between them.
const KEYS: u64 = 60;

/// One input record of a source: the row it aggregates into, a value for the sum and minimum,
/// and a value for the average (NULL sometimes).
#[derive(Debug, Clone)]
struct Rec {
    key: i64,
    x: i64,
    a: Option<i64>,
}

/// `n` records drawn from a small deterministic generator.
fn records(seed: u64, n: usize) -> Vec<Rec> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    (0..n)
        .map(|j| Rec {
            key: (next() % KEYS) as i64 * 10,
            x: (next() % 2001) as i64 - 1000,
            a: (j % 5 != 0).then(|| (next() % 100) as i64),
        })
        .collect()
}

/// The merge of the records of `key` at offsets `[from, to)` of a source. Values are small
/// integers, so float sums are exact whatever the order they are added in.
fn merge_of(source: &str, recs: &[Rec], key: i64, from: u64, to: u64) -> RowMerge {
    let sel: Vec<&Rec> = recs[from as usize..to as usize]
        .iter()
        .filter(|r| r.key == key)
        .collect();
    let avgs: Vec<i64> = sel.iter().filter_map(|r| r.a).collect();
    RowMerge {
        key: vec![Value::Int(key)],
        source: source.to_string(),
        from,
        to,
        ops: vec![
            MergeOp::Keep,
            MergeOp::Sum(Value::Int(sel.len() as i64)),
            MergeOp::Sum(Value::Float(sel.iter().map(|r| r.x as f64).sum())),
            MergeOp::Min(
                sel.iter()
                    .map(|r| r.x)
                    .min()
                    .map_or(Value::Null, Value::Int),
            ),
            MergeOp::Avg {
                sum: if avgs.is_empty() {
                    Value::Null
                } else {
                    Value::Float(avgs.iter().sum::<i64>() as f64)
                },
                count: avgs.len() as u64,
            },
        ],
    }
}

/// Merges the offsets `[start, end)` of a source in batches of `batch`, as a writer would,
/// re-sending each overlap from the row's mark; returns how many overlaps it met.
async fn run(table: &Table, source: &str, recs: &[Rec], start: u64, end: u64, batch: u64) -> u64 {
    let mut overlaps = 0;
    let mut from = start;
    while from < end {
        let to = (from + batch).min(end);
        let keys: BTreeSet<i64> = recs[from as usize..to as usize]
            .iter()
            .map(|r| r.key)
            .collect();
        let mut merges: Vec<RowMerge> = keys
            .iter()
            .map(|k| merge_of(source, recs, *k, from, to))
            .collect();
        loop {
            let over = table.merge(merges.clone()).await.expect("merge");
            if over.is_empty() {
                break;
            }
            overlaps += over.len() as u64;
            merges = over
                .iter()
                .map(|o| {
                    let m = &merges[o.index];
                    assert!(
                        m.from < o.mark && o.mark < m.to,
                        "mark {} inside [{}, {})",
                        o.mark,
                        m.from,
                        m.to
                    );
                    let Value::Int(k) = m.key[0] else {
                        panic!("key {:?}", m.key)
                    };
                    merge_of(source, recs, k, o.mark, m.to)
                })
                .collect();
        }
        from = to;
    }
    overlaps
}

/// What the rows must hold: per key, (n, s, lo, a) over every record of every source.
fn expected(sources: &[&[Rec]]) -> BTreeMap<i64, Vec<Value>> {
    let mut acc: BTreeMap<i64, (i64, i64, i64, i64, u64)> = BTreeMap::new();
    for recs in sources {
        for r in recs.iter() {
            let e = acc.entry(r.key).or_insert((0, 0, i64::MAX, 0, 0));
            e.0 += 1;
            e.1 += r.x;
            e.2 = e.2.min(r.x);
            if let Some(a) = r.a {
                e.3 += a;
                e.4 += 1;
            }
        }
    }
    acc.into_iter()
        .map(|(k, (n, s, lo, asum, acount))| {
            let avg = if acount == 0 {
                Value::Null
            } else {
                Value::Float(asum as f64 / acount as f64)
            };
            (
                k,
                vec![
                    Value::Int(k),
                    Value::Int(n),
                    Value::Float(s as f64),
                    Value::Int(lo),
                    avg,
                ],
            )
        })
        .collect()
}

async fn regions(client: &Client) -> usize {
    client
        .describe_table("agg")
        .await
        .map(|i| i.regions.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_merges_from_two_sources_count_every_record_once_across_a_split() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    let schema = TableSchema::parse(
        "k BIGINT, n BIGINT, s DOUBLE, lo BIGINT, a DOUBLE NULL",
        &["k".into()],
    )
    .unwrap();
    // Two regions from the start, small enough that the fillers below make them split.
    client
        .create_table_split_at("agg", &schema, 3, 8 * 1024, &[vec![Value::Int(300)]])
        .await
        .unwrap();
    let s0 = records(1, 400);
    let s1 = records(2, 300);
    // Each writer goes through its own node.
    let t0 = Client::connect(cluster.addr(1))
        .await
        .unwrap()
        .table("agg")
        .await
        .unwrap();
    let t1 = Client::connect(cluster.addr(2))
        .await
        .unwrap()
        .table("agg")
        .await
        .unwrap();

    // Before the crash: s0 reaches offset 200 in batches of 25, s1 offset 160 in batches of 40,
    // at the same time, into the same rows.
    let (o0, o1) = tokio::join!(
        run(&t0, "s0", &s0, 0, 200, 25),
        run(&t1, "s1", &s1, 0, 160, 40)
    );
    assert_eq!(o0 + o1, 0, "first passes never overlap");
    let before = regions(&client).await;

    // Rows between the merged ones make the regions split under the merged rows.
    let table = client.table("agg").await.unwrap();
    let fillers: Vec<Vec<Value>> = (0..KEYS as i64 * 10)
        .filter(|k| k % 10 != 0)
        .map(|k| {
            vec![
                Value::Int(k),
                Value::Int(0),
                Value::Float(0.0),
                Value::Int(0),
                Value::Null,
            ]
        })
        .collect();
    for chunk in fillers.chunks(100) {
        table.put(chunk.to_vec()).await.unwrap();
    }
    wait_until("the regions to split", Duration::from_secs(60), || {
        let client = client.clone();
        async move { (regions(&client).await > before).then_some(()) }
    })
    .await;

    // After the crash both writers replay from before where they were, in other batches, through
    // routes that are now stale, and go on to the end of their input.
    let (o0, o1) = tokio::join!(
        run(&t0, "s0", &s0, 130, 400, 35),
        run(&t1, "s1", &s1, 100, 300, 30)
    );
    assert!(o0 > 0 && o1 > 0, "replays met overlaps ({o0}, {o1})");

    let want = expected(&[&s0, &s1]);
    let keys: Vec<Vec<Value>> = want.keys().map(|k| vec![Value::Int(*k)]).collect();
    let got = table.get(&keys, &[], false).await.unwrap();
    for ((k, row), got) in want.iter().zip(&got) {
        let got = got.as_ref().unwrap_or_else(|| panic!("row {k} missing"));
        assert_eq!(&got.values, row, "row {k}");
    }
    // Replaying everything once more changes nothing (a batch reaching past a row's mark
    // overlaps it and adds the row's records after the mark: none).
    tokio::join!(
        run(&t0, "s0", &s0, 0, 400, 50),
        run(&t1, "s1", &s1, 0, 300, 300)
    );
    let values = |rows: &[Option<weir_client::TableRow>]| -> Vec<Option<Vec<Value>>> {
        rows.iter()
            .map(|r| r.as_ref().map(|r| r.values.clone()))
            .collect()
    };
    let again = table.get(&keys, &[], false).await.unwrap();
    assert_eq!(values(&again), values(&got));

    // Bad merges are refused, naming the column, and change nothing.
    let k0 = *want.keys().next().unwrap();
    let bad = |ops: Vec<MergeOp>| RowMerge {
        key: vec![Value::Int(k0)],
        source: "bad".into(),
        from: 0,
        to: 1,
        ops,
    };
    let keep = || vec![MergeOp::Keep; 5];
    let mut on_key = keep();
    on_key[0] = MergeOp::Sum(Value::Int(1));
    let mut avg_of_int = keep();
    avg_of_int[3] = MergeOp::Avg {
        sum: Value::Float(1.0),
        count: 1,
    };
    let mut overflow = keep();
    overflow[1] = MergeOp::Sum(Value::Int(i64::MAX));
    let mut wrong_kind = keep();
    wrong_kind[2] = MergeOp::Max(Value::Str("x".into()));
    for (ops, column) in [
        (on_key, "'k'"),
        (avg_of_int, "'lo'"),
        (overflow, "'n'"),
        (wrong_kind, "'s'"),
    ] {
        let e = table.merge(vec![bad(ops)]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.to_string().contains(column), "{e}");
    }
    let e = table
        .merge(vec![bad(vec![MergeOp::Keep])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let row = table.get(&keys[..1], &[], false).await.unwrap();
    assert_eq!(row[0], again[0], "refused merges changed nothing");
    cluster.shutdown().await;
}
