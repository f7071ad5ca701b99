//! Tests of the state machine: applies, snapshots, installs and crashes, per kind of group.

use super::install::{begin_install, write_install_rows};
use super::*;
use crate::catalog::GroupKind;
use crate::snapshot::read_rows;
use crate::types::{Expect, KvOp};
use crate::{partition, region};
use openraft::entry::RaftEntry;
use openraft::storage::RaftSnapshotBuilder;
use openraft::vote::RaftLeaderId;

impl StateMachine {
    /// Applies one command outside the apply loop (its writes stay in `b`).
    fn apply_one(
        &mut self,
        index: u64,
        req: &Request,
        b: &mut WriteBatch,
    ) -> Result<Response, StorageError> {
        let mut cx = ApplyCx {
            engine: &self.engine,
            group: self.group,
            index,
            term: 1,
            header: &mut self.header,
            batch: b,
        };
        self.state.apply(&mut cx, req)
    }
}

fn append(index: u64, n: u32) -> openraft::alias::EntryOf<TypeConfig> {
    append_in(1, index, n)
}

/// An append of `n` records at log `index`, written by the leader of `term`.
fn append_in(term: u64, index: u64, n: u32) -> openraft::alias::EntryOf<TypeConfig> {
    let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(term, 1);
    openraft::alias::EntryOf::<TypeConfig>::new_normal(
        openraft::LogId::new(lid, index),
        Request::Append {
            batch: bytes::Bytes::from(vec![index as u8; 100]),
            count: n,
            max_timestamp_ms: index as i64,
            producer: None,
        },
    )
}

async fn apply_all(sm: &mut StateMachine, entries: Vec<openraft::alias::EntryOf<TypeConfig>>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.unwrap();
}

fn partition() -> GroupKind {
    GroupKind::Partition {
        topic: "t".into(),
        partition: 0,
    }
}

fn state(sm: &StateMachine) -> PartitionState {
    match sm.watch() {
        GroupWatch::Partition(rx) => *rx.borrow(),
        _ => unreachable!("partition group"),
    }
}

#[tokio::test]
async fn partition_applies_snapshots_installs_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("a")).unwrap();
    let snaps = dir.path().join("snap-a");
    let mut sm = StateMachine::open(engine.clone(), 5, &partition(), &snaps).unwrap();
    apply_all(&mut sm, (1..=10).map(|i| append(i, 3)).collect()).await;
    assert_eq!(state(&sm).next_offset, 30);
    let got = partition::read_batches(&engine, 5, 7, 30, usize::MAX).unwrap();
    assert_eq!(
        got.first().map(|b| b.base_offset),
        Some(6),
        "batch holding offset 7"
    );
    assert_eq!(got.len(), 8);

    // Retention drops whole batches from the front.
    let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
    let trim = openraft::alias::EntryOf::<TypeConfig>::new_normal(
        openraft::LogId::new(lid, 11),
        Request::Trim { before: 9 },
    );
    apply_all(&mut sm, vec![trim]).await;
    assert_eq!(state(&sm).earliest, 9);
    assert_eq!(state(&sm).bytes, 700);

    let mut builder = sm.get_snapshot_builder().await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, 11);

    // A fresh replica installs it and serves the same data.
    let engine_b = Engine::open(&dir.path().join("b")).unwrap();
    let mut sm_b = StateMachine::open(
        engine_b.clone(),
        5,
        &partition(),
        &dir.path().join("snap-b"),
    )
    .unwrap();
    let copy = dir.path().join("incoming.snap");
    sent_copy(&engine, own_file(&snap.snapshot), 0, &copy);
    sm_b.install_snapshot(&snap.meta, SnapshotData::File(copy))
        .await
        .unwrap();
    assert_eq!(state(&sm_b), state(&sm));
    let a = partition::read_batches(&engine, 5, 9, 30, usize::MAX).unwrap();
    let b = partition::read_batches(&engine_b, 5, 9, 30, usize::MAX).unwrap();
    assert_eq!(a, b);
    assert_eq!(sm_b.applied_state().await.unwrap().0.unwrap().index, 11);
    assert!(sm_b.get_current_snapshot().await.unwrap().is_some());

    // Restart: the applied index and data come back from disk, so nothing is applied twice.
    drop(sm_b);
    drop(engine_b);
    let engine_b = Engine::open(&dir.path().join("b")).unwrap();
    let sm_b = StateMachine::open(engine_b, 5, &partition(), &dir.path().join("snap-b")).unwrap();
    assert_eq!(state(&sm_b).next_offset, 30);
    assert_eq!(state(&sm_b).earliest, 9);
}

#[tokio::test]
async fn leader_epochs_end_where_the_next_term_wrote_and_travel_with_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("a")).unwrap();
    let mut sm =
        StateMachine::open(engine.clone(), 5, &partition(), &dir.path().join("snap-a")).unwrap();
    // Term 2 writes offsets 0..6, term 5 writes 6..8, term 7 writes 8..12.
    apply_all(
        &mut sm,
        vec![
            append_in(2, 1, 3),
            append_in(2, 2, 3),
            append_in(5, 3, 2),
            append_in(7, 4, 4),
        ],
    )
    .await;
    let hw = state(&sm).next_offset;
    assert_eq!(hw, 12);
    let ends = |engine: &Engine| {
        [1, 2, 3, 5, 6, 7, 9]
            .map(|e| partition::epoch_end(engine, 5, e, hw).unwrap())
            .to_vec()
    };
    let want = vec![
        (None, 0),
        (Some(2), 6),
        (Some(2), 6),
        (Some(5), 8),
        (Some(5), 8),
        (Some(7), 12),
        (Some(7), 12),
    ];
    assert_eq!(ends(&engine), want);

    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let engine_b = Engine::open(&dir.path().join("b")).unwrap();
    let mut sm_b = StateMachine::open(
        engine_b.clone(),
        5,
        &partition(),
        &dir.path().join("snap-b"),
    )
    .unwrap();
    let copy = dir.path().join("incoming.snap");
    sent_copy(&engine, own_file(&snap.snapshot), 0, &copy);
    sm_b.install_snapshot(&snap.meta, SnapshotData::File(copy))
        .await
        .unwrap();
    assert_eq!(
        ends(&engine_b),
        want,
        "the installed replica knows the same epochs"
    );
    // A later term on the installed replica starts a new epoch after what it installed.
    apply_all(&mut sm_b, vec![append_in(9, 5, 1)]).await;
    assert_eq!(
        partition::epoch_end(&engine_b, 5, 7, 13).unwrap(),
        (Some(7), 12)
    );
    assert_eq!(
        partition::epoch_end(&engine_b, 5, 9, 13).unwrap(),
        (Some(9), 13)
    );
}

/// Index in `file` of the first run of 20 bytes equal to `b` (inside a batch written by
/// [`append`]).
fn find_run(file: &[u8], b: u8) -> usize {
    file.windows(20)
        .position(|w| w.iter().all(|x| *x == b))
        .expect("batch bytes in the snapshot file")
}

/// Keys of `group` in the data column family.
fn data_keys(engine: &Engine, group: u64) -> usize {
    let mut n = 0;
    engine
        .scan(
            CF_DATA,
            &group.to_be_bytes(),
            &(group + 1).to_be_bytes(),
            |_, _| {
                n += 1;
                Ok(true)
            },
        )
        .unwrap();
    n
}

#[tokio::test]
async fn torn_or_corrupt_snapshots_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("a")).unwrap();
    let mut sm =
        StateMachine::open(engine.clone(), 5, &partition(), &dir.path().join("sa")).unwrap();
    apply_all(&mut sm, (1..=10).map(|i| append(i, 3)).collect()).await;
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let sent = dir.path().join("sent.snap");
    sent_copy(&engine, own_file(&snap.snapshot), 0, &sent);
    let good = std::fs::read(&sent).unwrap();

    let engine_b = Engine::open(&dir.path().join("b")).unwrap();
    let mut b =
        StateMachine::open(engine_b.clone(), 5, &partition(), &dir.path().join("sb")).unwrap();
    apply_all(&mut b, (1..=3).map(|i| append(i, 3)).collect()).await;
    let before = partition::read_batches(&engine_b, 5, 0, 9, usize::MAX).unwrap();

    // A flipped bit inside a batch, and a file cut off right after a whole row (a transfer
    // or a write that stopped early).
    let mut flipped = good.clone();
    flipped[find_run(&good, 7) + 3] ^= 0x01;
    let cut = good[..find_run(&good, 5) + 100].to_vec();
    for (what, bytes) in [("flipped", flipped), ("cut", cut)] {
        let path = dir.path().join(format!("{what}.snap"));
        std::fs::write(&path, &bytes).unwrap();
        let r = b
            .install_snapshot(&snap.meta, SnapshotData::File(path))
            .await;
        assert!(r.is_err(), "{what} snapshot installed");
        assert_eq!(
            b.applied_state().await.unwrap().0.map(|l| l.index),
            Some(3),
            "{what}"
        );
        assert_eq!(state(&b).next_offset, 9, "{what}");
        let now = partition::read_batches(&engine_b, 5, 0, 9, usize::MAX).unwrap();
        assert_eq!(now, before, "{what}: data changed");
    }
    // The intact file installs.
    let path = dir.path().join("good.snap");
    std::fs::write(&path, &good).unwrap();
    b.install_snapshot(&snap.meta, SnapshotData::File(path))
        .await
        .unwrap();
    assert_eq!(state(&b).next_offset, 30);
}

#[tokio::test]
async fn leftover_snapshot_files_are_removed_when_a_group_opens() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let root = dir.path().join("snaps");
    let sd = SnapshotDir::new(&root, 5);
    let leftover = sd.temp_path().unwrap();
    std::fs::write(&leftover, b"half a snapshot").unwrap();
    let _sm = StateMachine::open(engine, 5, &partition(), &root).unwrap();
    assert!(!leftover.exists());
}

/// Builds a 20-entry partition snapshot in its own engine, as a leader would send it.
async fn leader_snapshot(dir: &Path) -> (SnapshotMetaOf<TypeConfig>, std::path::PathBuf) {
    let engine = Engine::open(&dir.join("leader")).unwrap();
    let mut sm = StateMachine::open(engine.clone(), 5, &partition(), &dir.join("sl")).unwrap();
    apply_all(&mut sm, (1..=20).map(|i| append(i, 3)).collect()).await;
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let copy = dir.join("sent.snap");
    sent_copy(&engine, own_file(&snap.snapshot), 0, &copy);
    (snap.meta, copy)
}

/// Writes to `dest` what a leader holding `engine` sends of its snapshot of group 5 at `path` to a
/// replica whose copy ends at `replica_end`; returns the bytes sent.
fn sent_copy(engine: &Engine, path: &Path, replica_end: u64, dest: &Path) -> u64 {
    let out = std::fs::File::create(dest).unwrap();
    let data = SnapshotData::File(path.to_path_buf());
    super::write_transfer(engine, 5, &data, replica_end, out).unwrap();
    std::fs::metadata(dest).unwrap().len()
}

#[tokio::test]
async fn a_replica_that_holds_the_front_of_a_partition_gets_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("leader")).unwrap();
    let mut sm =
        StateMachine::open(engine.clone(), 5, &partition(), &dir.path().join("sl")).unwrap();
    apply_all(&mut sm, (1..=20).map(|i| append(i, 3)).collect()).await;
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    // The leader's own file refers to its batches rather than copying them.
    let own = std::fs::metadata(own_file(&snap.snapshot)).unwrap().len();
    let full = sent_copy(
        &engine,
        own_file(&snap.snapshot),
        0,
        &dir.path().join("full.snap"),
    );
    assert!(own < 400, "own snapshot file of {own} bytes copies batches");

    // The follower holds entries 1..=10: offsets below 30.
    let (f_engine, _) = follower(dir.path()).await;
    drop(f_engine);
    let f_engine = Engine::open(&dir.path().join("f")).unwrap();
    let mut f =
        StateMachine::open(f_engine.clone(), 5, &partition(), &dir.path().join("sf")).unwrap();
    assert_eq!(state(&f).next_offset, 30);
    let rest = dir.path().join("rest.snap");
    let sent = sent_copy(&engine, own_file(&snap.snapshot), 30, &rest);
    assert!(
        sent * 2 < full + 400,
        "sent {sent} bytes of {full} to a replica holding half"
    );

    // A replica that claims more than it holds is refused, nothing changed.
    let mut short = StateMachine::open(
        Engine::open(&dir.path().join("s")).unwrap(),
        5,
        &partition(),
        &dir.path().join("ss"),
    )
    .unwrap();
    let refused = short
        .install_snapshot(&snap.meta, SnapshotData::File(rest.clone()))
        .await;
    assert!(refused.is_err(), "install over a gap");
    assert_eq!(state(&short).next_offset, 0);

    f.install_snapshot(&snap.meta, SnapshotData::File(rest))
        .await
        .unwrap();
    assert_eq!(state(&f), state(&sm));
    let a = partition::read_batches(&engine, 5, 0, 60, usize::MAX).unwrap();
    let b = partition::read_batches(&f_engine, 5, 0, 60, usize::MAX).unwrap();
    assert_eq!(a, b);
    // The follower's own snapshot refers to its batches too.
    let own_f = f.get_current_snapshot().await.unwrap().unwrap();
    assert!(std::fs::metadata(own_file(&own_f.snapshot)).unwrap().len() < 400);
}

/// A follower replica of group 5 holding 10 entries, a vote, and a log purged up to 4.
async fn follower(dir: &Path) -> (Engine, VoteOf) {
    let engine = Engine::open(&dir.join("f")).unwrap();
    let mut sm = StateMachine::open(engine.clone(), 5, &partition(), &dir.join("sf")).unwrap();
    apply_all(&mut sm, (1..=10).map(|i| append(i, 3)).collect()).await;
    use openraft::storage::RaftLogStorage;
    let mut log = crate::LogStore::new(engine.clone(), 5);
    let vote = openraft::alias::VoteOf::<TypeConfig>::new(7, 2);
    log.save_vote(&vote).await.unwrap();
    log.purge(append(4, 3).log_id).await.unwrap();
    (engine, vote)
}

type VoteOf = openraft::alias::VoteOf<TypeConfig>;

/// Reopens the follower as the node does after a crash and checks it is either at its old
/// state or empty (and so gets the snapshot again), with its vote intact.
async fn after_crash(dir: &Path, vote: &VoteOf) -> Option<u64> {
    let engine = Engine::open(&dir.join("f")).unwrap();
    let mut sm = StateMachine::recover(engine.clone(), 5, &partition(), &dir.join("sf")).unwrap();
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    let mut log = crate::LogStore::new(engine.clone(), 5);
    assert_eq!(
        log.read_vote().await.unwrap().as_ref(),
        Some(vote),
        "vote lost"
    );
    let applied = sm.applied_state().await.unwrap().0.map(|l| l.index);
    let purged = log.get_log_state().await.unwrap().last_purged_log_id;
    assert!(
        purged.map(|l| l.index) <= applied,
        "log purged to {purged:?} past applied {applied:?}"
    );
    match applied {
        Some(10) => {
            assert_eq!(state(&sm).next_offset, 30);
            assert_eq!(
                partition::read_batches(&engine, 5, 0, 30, usize::MAX)
                    .unwrap()
                    .len(),
                10
            );
        }
        Some(20) => assert_eq!(state(&sm).next_offset, 60),
        None => {
            assert_eq!(data_keys(&engine, 5), 0, "partial data left");
            assert_eq!(state(&sm).next_offset, 0);
        }
        other => panic!("replica at {other:?}: neither its old state, the new one, nor empty"),
    }
    applied
}

#[tokio::test]
async fn an_install_cut_short_by_a_crash_leaves_an_empty_replica_with_its_vote() {
    // Crash after the old data is dropped and part of the rows is written.
    let dir = tempfile::tempdir().unwrap();
    let (_, sent) = leader_snapshot(dir.path()).await;
    let (engine, vote) = follower(dir.path()).await;
    begin_install(&engine, 5, 0).unwrap();
    let mut b = WriteBatch::default();
    let mut n = 0;
    read_rows(&sent, |k, v| {
        if n < 4 {
            b.put(CF_DATA, k, v);
        }
        n += 1;
        Ok(())
    })
    .unwrap();
    engine.write_sync(b).unwrap();
    drop(engine);
    assert_eq!(after_crash(dir.path(), &vote).await, None);

    // Crash after every row is written, before the header.
    let dir = tempfile::tempdir().unwrap();
    let (_, sent) = leader_snapshot(dir.path()).await;
    let (engine, vote) = follower(dir.path()).await;
    begin_install(&engine, 5, 0).unwrap();
    write_install_rows(&engine, 5, &sent).unwrap();
    engine.sync_now().unwrap();
    drop(engine);
    assert_eq!(after_crash(dir.path(), &vote).await, None);

    // Crash right after the header: the new state is there in full.
    let dir = tempfile::tempdir().unwrap();
    let (meta, sent) = leader_snapshot(dir.path()).await;
    let (engine, vote) = follower(dir.path()).await;
    let header = install_file(&engine, 5, &meta, &sent, 0).unwrap();
    assert_eq!(header.applied.map(|l| l.index), Some(20));
    drop(engine);
    assert_eq!(after_crash(dir.path(), &vote).await, Some(20));
}

#[tokio::test]
async fn a_replica_behind_its_purged_log_is_reset_but_keeps_its_vote() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, vote) = follower(dir.path()).await;
    // The data (header included) is lost, the purged log is not.
    let mut b = WriteBatch::default();
    b.delete_group(CF_DATA, 5);
    engine.write_sync(b).unwrap();
    drop(engine);
    assert_eq!(after_crash(dir.path(), &vote).await, None);
    let engine = Engine::open(&dir.path().join("f")).unwrap();
    use openraft::storage::RaftLogStorage;
    let st = crate::LogStore::new(engine, 5)
        .get_log_state()
        .await
        .unwrap();
    assert!(st.last_log_id.is_none() && st.last_purged_log_id.is_none());
}

#[tokio::test]
async fn retried_batches_of_idempotent_producers_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(engine.clone(), 2, &partition(), dir.path()).unwrap();
    let req = |seq: u64| Request::Append {
        batch: bytes::Bytes::from_static(b"x"),
        count: 10,
        max_timestamp_ms: 0,
        producer: Some(crate::types::ProducerSeq {
            producer_id: 42,
            sequence: seq,
            jumping: false,
            counted: false,
            epoch: 0,
        }),
    };
    let mut b = WriteBatch::default();
    assert!(
        matches!(
            sm.apply_one(1, &req(1), &mut b).unwrap(),
            Response::OutOfOrder(_)
        ),
        "a new producer's batch 1 waits for its batch 0"
    );
    let first = sm.apply_one(1, &req(0), &mut b).unwrap();
    assert!(matches!(
        sm.apply_one(2, &req(2), &mut b).unwrap(),
        Response::OutOfOrder(_)
    ));
    let second = sm.apply_one(2, &req(1), &mut b).unwrap();
    let retry = sm.apply_one(3, &req(0), &mut b).unwrap();
    assert_eq!(first, retry, "a retried batch gets its original offsets");
    assert_eq!(
        second,
        Response::Appended {
            base_offset: 10,
            count: 10
        }
    );
    engine.write(b).unwrap();
    assert_eq!(sm.header.partition.next_offset, 20);
    // The de-duplication window survives a restart.
    drop(sm);
    let mut sm = StateMachine::open(engine, 2, &partition(), dir.path()).unwrap();
    let mut b = WriteBatch::default();
    assert_eq!(sm.apply_one(4, &req(1), &mut b).unwrap(), second);
    // A retry arriving after more batches than the window holds is stored already (batches are
    // stored in unbroken order): answered as such, not stored again, not refused.
    for seq in 2..9 {
        assert!(matches!(
            sm.apply_one(5, &req(seq), &mut b).unwrap(),
            Response::Appended { .. }
        ));
    }
    let end = sm.header.partition.next_offset;
    assert_eq!(
        sm.apply_one(6, &req(1), &mut b).unwrap(),
        Response::StoredEarlier
    );
    assert_eq!(sm.header.partition.next_offset, end);
}

#[tokio::test]
async fn jumping_producers_write_only_above_their_last_number_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(engine.clone(), 2, &partition(), dir.path()).unwrap();
    let at = |epoch: u64, seq: u64, count: u32| Request::Append {
        batch: bytes::Bytes::from_static(b"x"),
        count,
        max_timestamp_ms: 0,
        producer: Some(crate::types::ProducerSeq {
            producer_id: 7,
            sequence: seq,
            jumping: true,
            counted: false,
            epoch,
        }),
    };
    let req = |seq: u64, count: u32| at(1, seq, count);
    let mut b = WriteBatch::default();
    // An empty batch asks for the last number: none yet, and nothing is written.
    assert_eq!(
        sm.apply_one(1, &req(5, 0), &mut b).unwrap(),
        Response::Duplicate { last_sequence: 0 }
    );
    assert_eq!(
        sm.apply_one(2, &req(100, 3), &mut b).unwrap(),
        Response::Appended {
            base_offset: 0,
            count: 3
        }
    );
    // A gap is fine; the same or a lower number is a duplicate.
    assert_eq!(
        sm.apply_one(3, &req(250, 2), &mut b).unwrap(),
        Response::Appended {
            base_offset: 3,
            count: 2
        }
    );
    for seq in [250, 100, 1] {
        assert_eq!(
            sm.apply_one(4, &req(seq, 2), &mut b).unwrap(),
            Response::Duplicate { last_sequence: 250 }
        );
    }
    engine.write(b).unwrap();
    assert_eq!(sm.header.partition.next_offset, 5);
    drop(sm);
    let mut sm = StateMachine::open(engine.clone(), 2, &partition(), dir.path()).unwrap();
    let mut b = WriteBatch::default();
    assert_eq!(
        sm.apply_one(5, &req(0, 0), &mut b).unwrap(),
        Response::Duplicate { last_sequence: 250 }
    );
    // A new instance (epoch 2) announces itself with an empty batch: the old one is refused from
    // then on, across a restart too, and the new one writes.
    assert_eq!(
        sm.apply_one(6, &at(2, 0, 0), &mut b).unwrap(),
        Response::Duplicate { last_sequence: 250 }
    );
    engine.write(b).unwrap();
    drop(sm);
    let mut sm = StateMachine::open(engine, 2, &partition(), dir.path()).unwrap();
    let mut b = WriteBatch::default();
    assert_eq!(
        sm.apply_one(7, &at(1, 300, 2), &mut b).unwrap(),
        Response::StaleProducer { current_epoch: 2 }
    );
    // (The header with the offsets is written by the apply loop, not by `apply_one`.)
    assert!(matches!(
        sm.apply_one(8, &at(2, 300, 2), &mut b).unwrap(),
        Response::Appended { count: 2, .. }
    ));
}

/// The file of a snapshot that is one.
fn own_file(data: &SnapshotData) -> &Path {
    data.file().expect("a snapshot file")
}

fn region_kind() -> GroupKind {
    GroupKind::Region {
        table: "t".into(),
        start: Vec::new(),
        end: Vec::new(),
        epoch: 0,
        parent: None,
        origin: (Vec::new(), Vec::new(), 0),
    }
}

fn entry(index: u64, req: Request) -> openraft::alias::EntryOf<TypeConfig> {
    let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
    openraft::alias::EntryOf::<TypeConfig>::new_normal(openraft::LogId::new(lid, index), req)
}

fn put(k: &str, v: &str) -> KvOp {
    KvOp::Put {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn regions_apply_writes_cas_and_splits_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let mut sm = StateMachine::open(engine.clone(), 7, &region_kind(), dir.path()).unwrap();
    // 100 rows, a CAS that must see them within the same apply call, a split at k050.
    let log = || {
        let ops: Vec<KvOp> = (0..100).map(|i| put(&format!("k{i:03}"), "v")).collect();
        vec![
            entry(
                1,
                Request::KvWrite {
                    ops: ops.into(),
                    fence: None,
                    condition: None,
                },
            ),
            // In the same apply call: a CAS sees the write before it.
            entry(
                2,
                Request::KvWrite {
                    ops: vec![put("k000", "w")].into(),
                    fence: None,
                    condition: Some(crate::types::KvCondition {
                        key: b"k000".to_vec(),
                        expect: Expect::Version(1),
                    }),
                },
            ),
            entry(
                3,
                Request::Split {
                    split_key: b"k050".to_vec(),
                    child: 8,
                    epoch: 0,
                },
            ),
        ]
    };
    apply_all(&mut sm, log()).await;
    let k = |s: &str| s.as_bytes().to_vec();
    // A replica that starts empty after the split (the catalog now shows the narrower range)
    // replays the same log from its origin and ends in the same state.
    let late_engine = Engine::open(&dir.path().join("late")).unwrap();
    let narrowed = GroupKind::Region {
        table: "t".into(),
        start: Vec::new(),
        end: k("k050"),
        epoch: 1,
        parent: None,
        origin: (Vec::new(), Vec::new(), 0),
    };
    let mut late =
        StateMachine::open(late_engine.clone(), 7, &narrowed, &dir.path().join("s2")).unwrap();
    apply_all(&mut late, log()).await;
    assert_eq!(
        region::load_state(&late_engine, 7).unwrap(),
        region::load_state(&engine, 7).unwrap()
    );
    assert!(region::get_rows(&late_engine, 8, &[k("k099")])
        .unwrap()
        .unwrap()[0]
        .is_some());
    let got = region::get_rows(&engine, 7, &[k("k000"), k("k049")])
        .unwrap()
        .unwrap();
    assert_eq!(
        got[0].as_ref().map(|r| (r.version, r.value.clone())),
        Some((2, k("w")))
    );
    assert!(got[1].is_some());
    // The parent no longer holds the keys past the split; the child does, from a purged log.
    assert!(region::get_rows(&engine, 7, &[k("k050")]).unwrap().is_err());
    let child = region::get_rows(&engine, 8, &[k("k050"), k("k099")])
        .unwrap()
        .unwrap();
    assert!(child.iter().all(|r| r.is_some()));
    let st = region::load_state(&engine, 7).unwrap().unwrap();
    assert_eq!((st.end.clone(), st.epoch), (k("k050"), 1));
    let mut child_log = crate::LogStore::new(engine.clone(), 8);
    use openraft::storage::RaftLogStorage;
    let ls = child_log.get_log_state().await.unwrap();
    assert_eq!(
        ls.last_purged_log_id.map(|l| l.index),
        Some(REGION_INIT_INDEX)
    );
    let mut child_sm = StateMachine::open(engine.clone(), 8, &region_kind(), dir.path()).unwrap();
    let (applied, membership) = child_sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(REGION_INIT_INDEX));
    assert_eq!(
        membership.log_id().map(|l| l.index),
        Some(REGION_INIT_INDEX)
    );
    // The child can hand a follower a snapshot even though it never built one.
    assert!(child_sm.get_current_snapshot().await.unwrap().is_some());

    // Scans cross nothing: each region answers for its own range and says where to go on.
    let page = region::scan_rows(&engine, 7, b"k040", b"", 1000, usize::MAX, false)
        .unwrap()
        .unwrap();
    assert_eq!(page.rows.len(), 10);
    assert!(page.more);
    assert_eq!(page.resume, k("k050"));
    let page = region::scan_rows(&engine, 8, b"k050", b"", 1000, usize::MAX, true)
        .unwrap()
        .unwrap();
    assert_eq!(page.rows.first().map(|r| r.key.clone()), Some(k("k099")));
    assert_eq!(page.rows.len(), 50);
    assert!(!page.more);
    let page = region::scan_rows(&engine, 7, b"", b"k050", 5, usize::MAX, true)
        .unwrap()
        .unwrap();
    assert_eq!(page.rows.len(), 5);
    assert_eq!(page.resume, k("k045"));

    // A failed CAS and a write outside the range change nothing.
    let mut b = WriteBatch::default();
    let r = sm
        .apply_one(
            4,
            &Request::KvWrite {
                ops: vec![put("k001", "x")].into(),
                fence: None,
                condition: Some(crate::types::KvCondition {
                    key: b"k001".to_vec(),
                    expect: Expect::Version(99),
                }),
            },
            &mut b,
        )
        .unwrap();
    assert!(matches!(
        r,
        Response::CasFailed {
            current: Some((1, _))
        }
    ));
    let r = sm
        .apply_one(
            4,
            &Request::KvWrite {
                ops: vec![put("k001", "x"), put("k077", "x")].into(),
                fence: None,
                condition: None,
            },
            &mut b,
        )
        .unwrap();
    assert!(matches!(r, Response::NotInRegion(_)));
    // A split planned at an epoch the region has left (an earlier leader's plan) is refused.
    let r = sm
        .apply_one(
            4,
            &Request::Split {
                split_key: b"k020".to_vec(),
                child: 9,
                epoch: 0,
            },
            &mut b,
        )
        .unwrap();
    assert!(matches!(r, Response::Rejected(_)));
    assert!(b.is_empty());
}

#[tokio::test]
async fn region_snapshots_pin_their_rows_and_are_sent_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("a")).unwrap();
    let snaps = dir.path().join("snap-a");
    let mut sm = StateMachine::open(engine.clone(), 7, &region_kind(), &snaps).unwrap();
    // A replica that applied nothing has nothing to give.
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
    let write = |index: u64, ops: Vec<KvOp>| {
        entry(
            index,
            Request::KvWrite {
                ops: ops.into(),
                fence: None,
                condition: None,
            },
        )
    };
    let ops: Vec<KvOp> = (0..10).map(|i| put(&format!("k{i:03}"), "a")).collect();
    apply_all(&mut sm, vec![write(1, ops)]).await;

    // Building one copies nothing and writes no file: it pins the rows where they are.
    let built = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(1));
    assert!(built.snapshot.file().is_none());
    let files = std::fs::read_dir(&snaps).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 0, "a region writes no snapshot file");

    // Writes applied after the pin do not show in what is sent.
    let pinned = sm.get_current_snapshot().await.unwrap().expect("pinned");
    assert_eq!(pinned.meta.last_log_id.map(|l| l.index), Some(1));
    apply_all(
        &mut sm,
        vec![write(
            2,
            vec![
                put("k000", "b"),
                KvOp::Delete {
                    key: b"k001".to_vec(),
                },
                put("k010", "b"),
            ],
        )],
    )
    .await;
    let sent = dir.path().join("sent.snap");
    let out = std::fs::File::create(&sent).unwrap();
    super::write_transfer(&engine, 7, &pinned.snapshot, 0, out).unwrap();
    drop(pinned);

    // A replica installs it and holds the region as it was at entry 1, keeping no file.
    let engine_b = Engine::open(&dir.path().join("b")).unwrap();
    let mut b = StateMachine::open(
        engine_b.clone(),
        7,
        &region_kind(),
        &dir.path().join("snap-b"),
    )
    .unwrap();
    let meta = crate::snapshot::verify(&sent).unwrap();
    b.install_snapshot(&meta, SnapshotData::File(sent.clone()))
        .await
        .unwrap();
    assert!(!sent.exists(), "the received file is not kept");
    let (applied, _) = b.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));
    let k = |s: &str| s.as_bytes().to_vec();
    let rows = region::get_rows(&engine_b, 7, &[k("k000"), k("k001"), k("k010")])
        .unwrap()
        .unwrap();
    assert_eq!(rows[0].as_ref().map(|r| r.value.clone()), Some(k("a")));
    assert!(rows[1].is_some());
    assert!(rows[2].is_none());
    let count = region::scan_rows(&engine_b, 7, b"", b"", 1000, usize::MAX, false)
        .unwrap()
        .unwrap()
        .rows
        .len();
    assert_eq!(count, 10);

    // The leader's next snapshot is its state now; a pinned one cannot be installed.
    let now = sm.get_current_snapshot().await.unwrap().expect("pinned");
    assert_eq!(now.meta.last_log_id.map(|l| l.index), Some(2));
    assert!(b.install_snapshot(&now.meta, now.snapshot).await.is_err());
}

#[tokio::test]
async fn commands_of_another_kind_are_rejected_without_effect() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(engine, 1, &GroupKind::Offsets, dir.path()).unwrap();
    let mut b = WriteBatch::default();
    let r = sm
        .apply_one(1, &Request::Trim { before: 3 }, &mut b)
        .unwrap();
    assert!(matches!(r, Response::Rejected(_)));
    assert!(b.is_empty());
}

#[tokio::test]
async fn a_group_with_its_whole_log_builds_no_snapshot_when_asked_for_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("a")).unwrap();
    let snaps = dir.path().join("snap");
    let mut sm = StateMachine::open(engine.clone(), 5, &partition(), &snaps).unwrap();
    apply_all(&mut sm, (1..=3).map(|i| append(i, 2)).collect()).await;
    // Openraft asks at every start; copying a whole partition then would double its disk use.
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
    let files = std::fs::read_dir(&snaps).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 0, "no snapshot file written");

    // Once the log has been purged, a follower can only catch up from a snapshot: one is built.
    let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
    let mut b = WriteBatch::default();
    crate::LogStore::seed_purged(&mut b, 5, &openraft::LogId::new(lid, 3)).unwrap();
    engine.write_sync(b).unwrap();
    let snap = sm.get_current_snapshot().await.unwrap().expect("built");
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(3));
}

mod merges {
    use super::*;
    use weir_proto::table::merge::{encode_ops, MergeOp, MergeState, MergeTarget};
    use weir_proto::table::row::encode_cells;
    use weir_proto::table::{ColumnType, Value};

    /// Value columns of the merged rows: n BIGINT, a DOUBLE (an average), hi VARCHAR (a maximum).
    fn targets() -> Vec<MergeTarget> {
        [ColumnType::Int64, ColumnType::Float64, ColumnType::Utf8]
            .into_iter()
            .map(|ty| MergeTarget { ty, nullable: true })
            .collect()
    }

    fn merge(key: &str, source: &str, from: u64, to: u64, ops: Vec<MergeOp>) -> KvOp {
        KvOp::Merge {
            key: key.as_bytes().to_vec(),
            source: source.into(),
            from,
            to,
            ops: encode_ops(&ops, &targets()).unwrap(),
        }
    }

    /// Adds `n` to the count, `avg` (one value) to the average and `hi` to the maximum.
    fn add(key: &str, source: &str, from: u64, to: u64, n: i64, avg: f64, hi: &str) -> KvOp {
        merge(
            key,
            source,
            from,
            to,
            vec![
                MergeOp::Sum(Value::Int(n)),
                MergeOp::Avg {
                    sum: Value::Float(avg),
                    count: 1,
                },
                MergeOp::Max(Value::Str(hi.into())),
            ],
        )
    }

    fn cells(n: i64, avg: f64, hi: &str) -> Vec<u8> {
        encode_cells(&[Value::Int(n), Value::Float(avg), Value::Str(hi.into())])
    }

    /// Applies one write at `index`, stores it, and returns the answer.
    fn write(sm: &mut StateMachine, index: u64, ops: Vec<KvOp>) -> Response {
        let mut b = WriteBatch::default();
        let r = sm
            .apply_one(
                index,
                &Request::KvWrite {
                    ops: ops.into(),
                    fence: None,
                    condition: None,
                },
                &mut b,
            )
            .unwrap();
        sm.engine.write_sync(b).unwrap();
        let header = sm.header.clone();
        sm.state.publish(&header);
        r
    }

    fn row(engine: &Engine, group: u64, key: &str) -> Option<(u64, Vec<u8>)> {
        region::get_rows(engine, group, &[key.as_bytes().to_vec()])
            .unwrap()
            .unwrap()
            .remove(0)
            .map(|r| (r.version, r.value))
    }

    fn state_of(engine: &Engine, group: u64, key: &str) -> Option<MergeState> {
        let v = engine
            .get(
                crate::engine::CF_DATA,
                &region::row_key(group, key.as_bytes()),
            )
            .unwrap()?;
        let parts = region::split_value_with_state(&v).unwrap();
        parts.state.map(|s| MergeState::decode(s).unwrap())
    }

    fn written(overlaps: Vec<(u32, u64)>) -> impl Fn(&Response) -> bool {
        move |r| matches!(r, Response::KvWritten { overlaps: o, .. } if *o == overlaps)
    }

    #[tokio::test]
    async fn merges_apply_once_per_source_range_and_stay_invisible_to_reads() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(engine.clone(), 7, &region_kind(), dir.path()).unwrap();

        // A new row; within one write a second merge of the same row from another source sees
        // the first, and a replay of the first is covered.
        let r = write(
            &mut sm,
            1,
            vec![
                add("k1", "a", 0, 10, 5, 1.0, "m"),
                add("k1", "b", 0, 4, 2, 2.0, "z"),
                add("k1", "a", 3, 10, 100, 9.0, "zz"),
            ],
        );
        assert!(written(vec![])(&r), "{r:?}");
        assert_eq!(row(&engine, 7, "k1"), Some((1, cells(7, 1.5, "z"))));

        // Covered, overlapping and applied merges in one write: only the overlap is reported,
        // with the row's mark.
        let r = write(
            &mut sm,
            2,
            vec![
                add("k1", "a", 0, 10, 1000, 0.0, "a"),
                add("k1", "a", 5, 12, 1000, 0.0, "a"),
                add("k1", "b", 4, 6, 1, 6.0, "a"),
                add("k2", "a", 0, 1, 1, 1.0, "a"),
            ],
        );
        assert!(written(vec![(1, 10)])(&r), "{r:?}");
        assert_eq!(row(&engine, 7, "k1"), Some((2, cells(8, 3.0, "z"))));
        let st = state_of(&engine, 7, "k1").unwrap();
        assert_eq!(
            st.marks.into_iter().collect::<Vec<_>>(),
            vec![("a".to_string(), 10), ("b".to_string(), 6)]
        );
        assert_eq!(st.avgs.get(&1), Some(&(Value::Float(9.0), 3)));
        // A write with nothing to change keeps the row's version.
        let r = write(&mut sm, 3, vec![add("k1", "b", 0, 6, 1, 1.0, "a")]);
        assert!(written(vec![])(&r), "{r:?}");
        assert_eq!(row(&engine, 7, "k1").map(|r| r.0), Some(2));

        // Reads see the version and cells alone: scans, and a compare-and-set on the version.
        let page = region::scan_rows(&engine, 7, b"", b"", 10, usize::MAX, false)
            .unwrap()
            .unwrap();
        assert_eq!(page.rows.len(), 2);
        assert_eq!(
            (page.rows[0].version, &page.rows[0].value),
            (2, &cells(8, 3.0, "z"))
        );
        let mut b = WriteBatch::default();
        let r = sm
            .apply_one(
                4,
                &Request::KvWrite {
                    ops: vec![put("k1", "x")].into(),
                    fence: None,
                    condition: Some(crate::types::KvCondition {
                        key: b"k1".to_vec(),
                        expect: Expect::Version(1),
                    }),
                },
                &mut b,
            )
            .unwrap();
        assert_eq!(
            r,
            Response::CasFailed {
                current: Some((2, cells(8, 3.0, "z")))
            }
        );

        // A put drops the state: the same range merges again, from a fresh average.
        let put_row = KvOp::Put {
            key: b"k1".to_vec(),
            value: cells(1, 50.0, "p"),
        };
        let r = write(
            &mut sm,
            5,
            vec![put_row, add("k1", "a", 0, 10, 1, 4.0, "a")],
        );
        assert!(written(vec![])(&r), "{r:?}");
        assert_eq!(row(&engine, 7, "k1"), Some((5, cells(2, 4.0, "p"))));
        let r = write(&mut sm, 6, vec![put("k2", "")]);
        assert!(written(vec![])(&r), "{r:?}");
        assert_eq!(state_of(&engine, 7, "k2"), None);
    }

    #[tokio::test]
    async fn a_merge_that_fails_writes_nothing_of_its_write() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(engine.clone(), 7, &region_kind(), dir.path()).unwrap();
        let r = write(&mut sm, 1, vec![add("k1", "a", 0, 1, i64::MAX, 1.0, "a")]);
        assert!(written(vec![])(&r), "{r:?}");
        let before = row(&engine, 7, "k1");
        let mut b = WriteBatch::default();
        let r = sm
            .apply_one(
                2,
                &Request::KvWrite {
                    ops: vec![
                        put("k0", "v"),
                        add("k2", "a", 0, 1, 1, 1.0, "a"),
                        add("k1", "a", 1, 2, 1, 1.0, "a"),
                    ]
                    .into(),
                    fence: None,
                    condition: None,
                },
                &mut b,
            )
            .unwrap();
        assert!(
            matches!(
                &r,
                Response::MergeFailed { index: 2, column: Some(0), reason } if reason.contains("overflows")
            ),
            "{r:?}"
        );
        assert!(b.is_empty(), "nothing written");
        // Nor does the next entry of the same apply call see any of it.
        let r = sm
            .apply_one(
                3,
                &Request::KvWrite {
                    ops: vec![add("k2", "a", 0, 1, 1, 1.0, "a")].into(),
                    fence: None,
                    condition: None,
                },
                &mut b,
            )
            .unwrap();
        assert!(written(vec![])(&r), "{r:?}");
        sm.engine.write_sync(b).unwrap();
        assert_eq!(row(&engine, 7, "k1"), before);
        assert_eq!(row(&engine, 7, "k0"), None);
        assert_eq!(row(&engine, 7, "k2"), Some((3, cells(1, 1.0, "a"))));
        // A value of another kind than the cell is refused likewise.
        let mut b = WriteBatch::default();
        let r = sm
            .apply_one(
                4,
                &Request::KvWrite {
                    ops: vec![merge(
                        "k2",
                        "b",
                        0,
                        1,
                        vec![MergeOp::Keep, MergeOp::Keep, MergeOp::Min(Value::Int(3))],
                    )]
                    .into(),
                    fence: None,
                    condition: None,
                },
                &mut b,
            )
            .unwrap();
        assert!(
            matches!(
                r,
                Response::MergeFailed {
                    index: 0,
                    column: Some(2),
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn merge_state_moves_with_its_rows_when_the_region_splits() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(engine.clone(), 7, &region_kind(), dir.path()).unwrap();
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let ops = keys
            .iter()
            .map(|k| add(k, "a", 0, 5, 1, 1.0, "a"))
            .collect();
        write(&mut sm, 1, ops);
        apply_all(
            &mut sm,
            vec![entry(
                2,
                Request::Split {
                    split_key: b"k5".to_vec(),
                    child: 8,
                    epoch: 0,
                },
            )],
        )
        .await;
        // The parent refuses merges of keys it no longer holds; the child has the rows and their
        // marks, so a replay is covered and the next range applies.
        let mut b = WriteBatch::default();
        let r = sm
            .apply_one(
                3,
                &Request::KvWrite {
                    ops: vec![add("k7", "a", 0, 5, 1, 1.0, "a")].into(),
                    fence: None,
                    condition: None,
                },
                &mut b,
            )
            .unwrap();
        assert!(matches!(r, Response::NotInRegion(_)), "{r:?}");
        let mut child = StateMachine::open(engine.clone(), 8, &region_kind(), dir.path()).unwrap();
        let r = write(
            &mut child,
            6,
            vec![
                add("k7", "a", 0, 5, 1, 1.0, "a"),
                add("k7", "a", 2, 8, 1, 1.0, "a"),
                add("k8", "a", 5, 8, 1, 3.0, "b"),
            ],
        );
        assert!(written(vec![(1, 5)])(&r), "{r:?}");
        assert_eq!(row(&engine, 8, "k7"), Some((1, cells(1, 1.0, "a"))));
        assert_eq!(row(&engine, 8, "k8"), Some((6, cells(2, 2.0, "b"))));
        assert_eq!(row(&engine, 7, "k4"), Some((1, cells(1, 1.0, "a"))));
        assert_eq!(state_of(&engine, 8, "k8").unwrap().marks.get("a"), Some(&8));
    }
}

#[tokio::test]
async fn a_fenced_writer_is_refused_after_a_newer_token_even_in_a_region_split_off_later() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let mut sm = StateMachine::open(engine.clone(), 7, &region_kind(), dir.path()).unwrap();
    let fence = |token: u64| crate::types::WriterFence {
        holder: "schedule 1".into(),
        token,
    };
    let write = |key: &str, token: Option<u64>| Request::KvWrite {
        ops: vec![put(key, "v")].into(),
        fence: token.map(fence),
        condition: None,
    };
    apply_all(
        &mut sm,
        vec![
            entry(1, write("k010", Some(2))),
            // A write refused for another reason does not raise the token.
            entry(
                2,
                Request::KvWrite {
                    ops: vec![put("k011", "v")].into(),
                    fence: Some(fence(9)),
                    condition: Some(crate::types::KvCondition {
                        key: b"k011".to_vec(),
                        expect: Expect::Version(42),
                    }),
                },
            ),
            entry(3, write("k012", Some(2))),
        ],
    )
    .await;
    let k = |s: &str| s.as_bytes().to_vec();
    let mut b = WriteBatch::default();
    let r = sm
        .apply_one(
            4,
            &Request::Fence {
                fence: fence(3),
                key: k("k000"),
            },
            &mut b,
        )
        .unwrap();
    assert_eq!(r, Response::Fenced { end: Vec::new() });
    engine.write(b).unwrap();
    // The old instance is refused and writes nothing; writers without a token, or with another
    // holder's, are not concerned.
    let mut b = WriteBatch::default();
    let r = sm.apply_one(5, &write("k020", Some(2)), &mut b).unwrap();
    assert_eq!(r, Response::StaleWriter { current: 3 });
    assert!(b.is_empty());
    let r = sm.apply_one(5, &write("k020", None), &mut b).unwrap();
    assert!(matches!(r, Response::KvWritten { .. }), "{r:?}");
    let other = Request::KvWrite {
        ops: vec![put("k021", "v")].into(),
        fence: Some(crate::types::WriterFence {
            holder: "schedule 2".into(),
            token: 1,
        }),
        condition: None,
    };
    let r = sm.apply_one(6, &other, &mut b).unwrap();
    assert!(matches!(r, Response::KvWritten { .. }), "{r:?}");
    engine.write(b).unwrap();
    apply_all(
        &mut sm,
        vec![entry(
            7,
            Request::Split {
                split_key: k("k050"),
                child: 8,
                epoch: 0,
            },
        )],
    )
    .await;
    // The parent now ends at the split key, and says so to a fence walking the table.
    let mut b = WriteBatch::default();
    let r = sm
        .apply_one(
            8,
            &Request::Fence {
                fence: fence(3),
                key: k("k000"),
            },
            &mut b,
        )
        .unwrap();
    assert_eq!(r, Response::Fenced { end: k("k050") });
    let r = sm
        .apply_one(
            8,
            &Request::Fence {
                fence: fence(4),
                key: k("k077"),
            },
            &mut b,
        )
        .unwrap();
    assert!(matches!(r, Response::NotInRegion(_)), "{r:?}");
    // The new region took the tokens with it, and keeps them across a restart.
    let mut child = StateMachine::open(engine.clone(), 8, &region_kind(), dir.path()).unwrap();
    let mut b = WriteBatch::default();
    let r = child.apply_one(6, &write("k060", Some(2)), &mut b).unwrap();
    assert_eq!(r, Response::StaleWriter { current: 3 });
    let r = child.apply_one(6, &write("k061", Some(3)), &mut b).unwrap();
    assert!(matches!(r, Response::KvWritten { .. }), "{r:?}");
    let st = region::load_state(&engine, 8).unwrap().unwrap();
    assert_eq!(st.fences.get("schedule 1"), Some(&3));
    assert_eq!(st.fences.get("schedule 2"), Some(&1));
}
