//! Clients of key/value registers for linearizability tests: random reads, writes and
//! compare-and-sets on a few rows, each recorded in a [`History`] for the checker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use weir_proto::v1::kv_client::KvClient;
use weir_proto::v1::{self, cas_request, mutation, ColumnExpect, Mutation};

use crate::linearizability::{Event, History, Op, Outcome};

/// The registers, each a row of table [`TABLE`].
pub const KEYS: [&str; 3] = ["x", "y", "z"];
/// The table the registers live in: `k VARCHAR, v BIGINT`, key `k`.
pub const TABLE: &str = "reg";

/// The key of register `k`.
fn key(k: &str) -> v1::Key {
    v1::Key {
        values: vec![weir_client::Value::Str(k.into()).to_proto()],
    }
}

/// Register `k` holding `v`.
fn row(k: &str, v: i64) -> v1::Row {
    v1::Row {
        values: vec![
            weir_client::Value::Str(k.into()).to_proto(),
            weir_client::Value::Int(v).to_proto(),
        ],
        version: 0,
    }
}

/// How a register value appears in the history.
fn bytes(v: i64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

/// A request that gives up after 3 s.
fn request<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.set_timeout(Duration::from_secs(3));
    r
}

/// One client until `stop`: random gets, puts and compare-and-sets on the registers drawn from
/// `seed`, single attempts (no retries, so every outcome is what the server said), any error
/// recorded as an unknown outcome.
pub async fn run_client(
    id: usize,
    mut kv: KvClient<Channel>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen: [Option<i64>; 3] = [None; 3];
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let (ki, choice, fresh) = (
            rng.random_range(0..KEYS.len()),
            rng.random_range(0..10),
            rng.random_range(0..3),
        );
        let k = KEYS[ki];
        n += 1;
        let value = (id as i64) * 1_000_000_000 + n;
        let invoke_ns = history.now_ns();
        // Recorded as unknown if the task is aborted while the request is in flight: the write
        // may have landed, and a read of it must still find its invocation in the history.
        let mut pending = Pending {
            history: &history,
            event: Some(Event {
                client: id,
                key: k.as_bytes().to_vec(),
                op: Op::Get,
                outcome: Outcome::Unknown,
                invoke_ns,
                complete_ns: invoke_ns,
            }),
        };
        let (op, outcome) = if choice < 4 {
            let r = kv
                .get(request(v1::GetRequest {
                    table: TABLE.into(),
                    keys: vec![key(k)],
                    columns: vec!["v".into()],
                    stale: false,
                }))
                .await;
            let outcome = match r {
                Ok(resp) => {
                    let got = resp.into_inner().rows.into_iter().next();
                    let v = got.filter(|m| m.found).and_then(|m| m.row).and_then(|r| {
                        match weir_client::Value::from_proto(r.values.first()?).ok()? {
                            weir_client::Value::Int(v) => Some(v),
                            _ => None,
                        }
                    });
                    seen[ki] = v;
                    Outcome::Value(v.map(bytes))
                }
                Err(_) => Outcome::Unknown,
            };
            (Op::Get, outcome)
        } else if choice < 7 {
            pending.set_op(Op::Put {
                value: Some(bytes(value)),
            });
            let r = kv
                .write(request(v1::WriteRequest {
                    table: TABLE.into(),
                    mutations: vec![Mutation {
                        op: Some(mutation::Op::Put(row(k, value))),
                    }],
                    atomic: true,
                    fence: None,
                }))
                .await;
            let outcome = if r.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Unknown
            };
            (
                Op::Put {
                    value: Some(bytes(value)),
                },
                outcome,
            )
        } else {
            // Expect what this client last saw (usually current), or a value never written.
            let expected = if fresh == 0 { Some(-1) } else { seen[ki] };
            let Some(expected) = expected else {
                pending.event = None;
                continue;
            };
            pending.set_op(Op::Cas {
                expected: Some(bytes(expected)),
                new: Some(bytes(value)),
            });
            let r = kv
                .compare_and_set(request(v1::CasRequest {
                    table: TABLE.into(),
                    key: Some(key(k)),
                    expect: Some(cas_request::Expect::Column(ColumnExpect {
                        column: "v".into(),
                        value: Some(weir_client::Value::Int(expected).to_proto()),
                    })),
                    then: Some(Mutation {
                        op: Some(mutation::Op::Put(row(k, value))),
                    }),
                }))
                .await;
            let outcome = match r {
                Ok(resp) => Outcome::CasResult(resp.into_inner().succeeded),
                Err(_) => Outcome::Unknown,
            };
            (
                Op::Cas {
                    expected: Some(bytes(expected)),
                    new: Some(bytes(value)),
                },
                outcome,
            )
        };
        let failed = outcome == Outcome::Unknown;
        pending.finish(op, outcome);
        if failed {
            // The node may be down: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An operation sent and not yet answered: recorded when it completes, or as
/// [`Outcome::Unknown`] if its client is dropped first.
struct Pending<'a> {
    history: &'a History,
    event: Option<Event>,
}

impl Pending<'_> {
    /// Names the operation about to be sent.
    fn set_op(&mut self, op: Op) {
        if let Some(e) = &mut self.event {
            e.op = op;
        }
    }

    /// Records the operation with what the client saw.
    fn finish(mut self, op: Op, outcome: Outcome) {
        if let Some(mut e) = self.event.take() {
            e.op = op;
            e.outcome = outcome;
            e.complete_ns = self.history.now_ns();
            self.history.record(e);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(mut e) = self.event.take() {
            e.complete_ns = self.history.now_ns();
            self.history.record(e);
        }
    }
}
