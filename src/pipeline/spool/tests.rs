//! Spool behaviour: order, durability across reopen, repair of torn tails, prepend, budget.

use std::fs::OpenOptions;
use std::io::Write;

use bytes::Bytes;

use super::*;
use crate::envelope::{BodyFormat, EventId, IdempotencyKey, Source, StreamTarget};
use crate::pipeline::spool::record::V1Streams;

fn env(call: &str, seq: u64) -> Envelope {
    let body = Bytes::from(format!("Event-Name: DTMF\nEvent-Sequence: {seq}\n\n"));
    let key = IdempotencyKey { producer: "core".into(), id: EventId::Seq(seq) };
    Envelope {
        name: "DTMF".into(),
        ordering_key: call.into(),
        parsed_at_us: seq as i64,
        ..Envelope::new(Source::Esl, StreamTarget::new("s", 0, "events"), BodyFormat::EslPlain, body, key)
    }
}

fn seqs<'a>(envs: impl IntoIterator<Item = &'a Envelope>) -> Vec<u64> {
    envs.into_iter().map(|e| e.key.id.seq().unwrap()).collect()
}

fn read_all(spool: &mut LaneSpool) -> Vec<Envelope> {
    let mut out = Vec::new();
    while spool.read_batch(7, &mut out).unwrap() > 0 {}
    out
}

#[test]
fn appends_read_back_in_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let budget = SpoolBudget::new(1 << 30);
    {
        let (mut s, r) = LaneSpool::open(dir.path(), budget.clone()).unwrap();
        assert_eq!(r, Recovery::default());
        for i in 0..100 {
            s.append(&env("a", i)).unwrap();
        }
        let first = {
            let mut out = Vec::new();
            s.read_batch(40, &mut out).unwrap();
            out
        };
        assert_eq!(seqs(&first), (0..40).collect::<Vec<_>>());
        s.commit(first[29].spool_pos.unwrap()).unwrap();
        // Dropped without sync: a SIGKILL leaves the same bytes behind.
    }
    let (mut s, r) = LaneSpool::open(dir.path(), SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!(r.records, 70, "records after the committed cursor are replayed");
    assert_eq!(seqs(&read_all(&mut s)), (30..100).collect::<Vec<_>>());
}

#[test]
fn torn_and_corrupt_tails_are_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = LaneSpool::open(dir.path(), SpoolBudget::new(1 << 30)).unwrap();
        for i in 0..10 {
            s.append(&env("a", i)).unwrap();
        }
    }
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A torn record: half a header and some payload.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let (mut s, r) = LaneSpool::open(dir.path(), SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!((r.records, r.truncated_bytes), (10, 6));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(seqs(&read_all(&mut s)), (0..10).collect::<Vec<_>>());
    drop(s);

    // A flipped byte in the 8th record: records 0..7 survive, the rest is cut.
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut offset = 0usize;
    for _ in 0..7 {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + len;
    }
    bytes[offset + 20] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_file(dir.path().join("cursor")).unwrap();
    let (mut s, r) = LaneSpool::open(dir.path(), SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!(r.records, 7);
    assert!(r.truncated_bytes > 0);
    assert_eq!(seqs(&read_all(&mut s)), (0..7).collect::<Vec<_>>());
}

#[test]
fn prepend_goes_before_unread_and_rewind_rereads() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = LaneSpool::open(dir.path(), SpoolBudget::new(1 << 30)).unwrap();
    for i in 10..20 {
        s.append(&env("a", i)).unwrap();
    }
    let mut out = Vec::new();
    s.read_batch(3, &mut out).unwrap();
    assert_eq!(seqs(&out), vec![10, 11, 12]);
    s.rewind();
    assert_eq!(s.unread(), 10);
    let older: Vec<Envelope> = (0..10).map(|i| env("a", i)).collect();
    s.prepend(&older).unwrap();
    s.append(&env("a", 20)).unwrap();
    assert_eq!(seqs(&read_all(&mut s)), (0..21).collect::<Vec<_>>());
    drop(s);
    // The prepended segment and the cursor survive a restart too.
    let (mut s, r) = LaneSpool::open(dir.path(), SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!(r.records, 21);
    assert_eq!(seqs(&read_all(&mut s)), (0..21).collect::<Vec<_>>());
}

/// A spill while part of a segment is acknowledged: the events put in front are read, then
/// the rest of that segment from where its acknowledged records end, never those again (they
/// are in Redis already, and would be written twice), and the unread count stays exact (an
/// undercount would leave events in the spool that nobody reads).
#[test]
fn prepend_after_a_partial_commit_skips_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = LaneSpool::open(dir.path(), SpoolBudget::new(1 << 30)).unwrap();
    for i in 10..20 {
        s.append(&env("a", i)).unwrap();
    }
    let mut out = Vec::new();
    s.read_batch(5, &mut out).unwrap();
    s.commit(out[2].spool_pos.unwrap()).unwrap(); // 10, 11, 12 are written
    s.rewind(); // 13, 14 were in flight: read again
    assert_eq!(s.unread(), 7);
    s.prepend(&[env("a", 5), env("a", 6)]).unwrap();
    assert_eq!(s.unread(), 9);
    s.append(&env("a", 20)).unwrap();
    let mut got = Vec::new();
    s.read_batch(4, &mut got).unwrap();
    assert_eq!(seqs(&got), [5, 6, 13, 14]);
    // In flight again, with a second spill: the first part of the prepended segment is written.
    s.commit(got[1].spool_pos.unwrap()).unwrap();
    s.rewind();
    s.prepend(&[env("a", 7)]).unwrap();
    let expected = [7, 13, 14, 15, 16, 17, 18, 19, 20];
    assert_eq!(s.unread(), expected.len() as u64);
    let mut out = Vec::new();
    s.read_batch(100, &mut out).unwrap();
    assert_eq!(seqs(&out), expected);
    assert_eq!(s.unread(), 0);
    drop(s);
    // After a restart (nothing past the cursor committed): the same, from the cursor.
    let (mut s, r) = LaneSpool::open(dir.path(), SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!(r.records, expected.len() as u64);
    assert_eq!(seqs(&read_all(&mut s)), expected);
}

#[test]
fn budget_is_shared_and_released_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut one = Vec::new();
    record::encode(&env("a", 0), &mut one);
    let budget = SpoolBudget::new(one.len() as u64 * 5);
    let (mut a, _) = LaneSpool::open(&dir.path().join("a"), budget.clone()).unwrap();
    let (mut b, _) = LaneSpool::open(&dir.path().join("b"), budget.clone()).unwrap();
    for i in 0..3 {
        a.append(&env("a", i)).unwrap();
    }
    b.append(&env("b", 0)).unwrap();
    b.append(&env("b", 1)).unwrap();
    assert!(matches!(b.append(&env("b", 2)), Err(SpoolError::Full { .. })));
    assert_eq!(budget.events(), 5);
    // Reading and committing a whole segment frees its bytes once a newer segment exists.
    let all = read_all(&mut a);
    assert_eq!(all.len(), 3);
    assert_eq!(budget.events(), 2);
    a.commit(all.last().unwrap().spool_pos.unwrap()).unwrap();
    assert_eq!(budget.used(), one.len() as u64 * 2);
    b.append(&env("b", 2)).unwrap();
    // A drained spool keeps working, and its cursor stays right across a restart.
    a.append(&env("a", 3)).unwrap();
    drop(a);
    let (mut a, r) = LaneSpool::open(&dir.path().join("a"), SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!(r.records, 1);
    assert_eq!(seqs(&read_all(&mut a)), vec![3]);
}

#[test]
fn changing_the_lane_count_repartitions_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut spools = open_lanes(dir.path(), 4, SpoolBudget::new(1 << 30), &V1Streams::default()).unwrap();
        for call in 0..20 {
            let id = format!("call-{call}");
            let lane = crate::pipeline::routing::lane_for(&id, 4);
            for seq in 0..5 {
                spools[lane].append(&env(&id, call * 100 + seq)).unwrap();
            }
        }
    }
    let mut spools = open_lanes(dir.path(), 3, SpoolBudget::new(1 << 30), &V1Streams::default()).unwrap();
    let mut total = 0;
    for (lane, spool) in spools.iter_mut().enumerate() {
        let events = read_all(spool);
        total += events.len();
        for call in 0..20u64 {
            let id = format!("call-{call}");
            let mine: Vec<u64> = seqs(events.iter().filter(|e| e.ordering_key == id));
            if crate::pipeline::routing::lane_for(&id, 3) == lane {
                assert_eq!(mine, (0..5).map(|s| call * 100 + s).collect::<Vec<_>>());
            } else {
                assert!(mine.is_empty());
            }
        }
    }
    assert_eq!(total, 100);
    assert!(!dir.path().join("repartition-0").exists());
}

/// An event of about 1 MiB: fifteen fill a segment.
fn big(call: &str, seq: u64) -> Envelope {
    Envelope { body: Bytes::from(vec![b'x'; 1 << 20]), ..env(call, seq) }
}

/// A lane's spool in `<temporary directory>/lane-0` holding `make("a", 0..n)`, synced.
fn spool_of(n: u64, make: fn(&str, u64) -> Envelope) -> (tempfile::TempDir, PathBuf, Arc<SpoolBudget>, LaneSpool) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("lane-0");
    let budget = SpoolBudget::new(1 << 30);
    let (mut s, _) = LaneSpool::open(&dir, budget.clone()).unwrap();
    for i in 0..n {
        s.append(&make("a", i)).unwrap();
    }
    s.sync().unwrap();
    (root, dir, budget, s)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

/// The directory deleted while the segment being appended to and the one being read are open:
/// both are put back (the buffered records too), nothing is lost, order holds, and what is put
/// back survives a restart.
#[test]
fn a_deleted_directory_is_put_back_from_the_open_segments() {
    let (_root, dir, budget, mut s) = spool_of(100, env);
    let mut first = Vec::new();
    s.read_batch(30, &mut first).unwrap();
    s.commit(first[19].spool_pos.unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for i in 100..150 {
        s.append(&env("a", i)).unwrap();
    }
    s.sync().unwrap(); // finds the tail's file gone: puts it back first
    assert_eq!(segment_files(&dir).len(), 1, "the segment is back on disk");
    assert!(dir.join("cursor").exists());
    assert_eq!(budget.lost(), 0);
    let rest = read_all(&mut s);
    assert_eq!(seqs(&rest), (30..150).collect::<Vec<_>>());
    drop(s);
    // A restart finds everything after the committed cursor: the 10 read but not acknowledged,
    // and the rest.
    let (mut s, r) = LaneSpool::open(&dir, SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!(r.records, 130);
    assert_eq!(seqs(&read_all(&mut s)), (20..150).collect::<Vec<_>>());
}

/// A closed segment deleted before it was read: its events are counted as lost, exactly, and the
/// lane reads on (it does not wait for a file that will not come back).
#[test]
fn a_deleted_closed_segment_is_counted_as_lost_and_reading_goes_on() {
    let (_root, dir, budget, mut s) = spool_of(20, big);
    let files = segment_files(&dir);
    assert_eq!(files.len(), 2, "two segments: {files:?}");
    let (_, in_first, _) = super::files::verify_segment(&files[0], 0).unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    let rest = read_all(&mut s);
    assert_eq!(seqs(&rest), (in_first..20).collect::<Vec<_>>(), "the tail's events, in order");
    assert_eq!(budget.lost(), in_first);
    assert_eq!((s.unread(), budget.events()), (0, 0), "nothing left unread");
    let on_disk: u64 = segment_files(&dir).iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert_eq!(budget.used(), on_disk, "the budget holds only what is on disk");
    // The whole directory, with the reader in the middle of the only segment left: nothing lost.
    for i in 20..25 {
        s.append(&big("a", i)).unwrap();
    }
    let mut out = Vec::new();
    s.read_batch(2, &mut out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    s.append(&big("a", 25)).unwrap();
    out.extend(read_all(&mut s));
    assert_eq!(seqs(&out), (20..26).collect::<Vec<_>>());
    assert_eq!(budget.lost(), in_first, "no more lost");
}

/// A batch read across two segments, the first deleted while the batch is in flight: a rewind
/// says it made fewer records unread than the batch holds (the lane then keeps the batch with
/// the writer instead of spilling it, see `Lane::spill`), and undoing it leaves the spool as
/// it was.
#[test]
fn a_rewind_over_a_deleted_segment_says_so() {
    let (_root, dir, _budget, mut s) = spool_of(20, big);
    let mut batch = Vec::new();
    s.read_batch(17, &mut batch).unwrap();
    let files = segment_files(&dir);
    assert_ne!(batch[0].spool_pos.unwrap().segment, batch[16].spool_pos.unwrap().segment, "across two segments");
    std::fs::remove_file(&files[0]).unwrap();
    let rewound = s.rewind();
    assert!(rewound.records() < 17, "{} of 17", rewound.records());
    s.undo_rewind(rewound);
    s.commit(batch[16].spool_pos.unwrap()).unwrap(); // written after all: the deleted segment goes
    assert_eq!(seqs(&read_all(&mut s)), (17..20).collect::<Vec<_>>());
}

/// The same with the first segment cut short inside its last record: the rewind counts the whole
/// records still there (not none), and that falls short of the batch too.
#[test]
fn a_rewind_over_a_segment_cut_short_counts_the_whole_records_left() {
    let (_root, dir, _budget, mut s) = spool_of(20, big);
    let mut batch = Vec::new();
    s.read_batch(17, &mut batch).unwrap();
    let first = batch[0].spool_pos.unwrap().segment;
    let in_first = batch.iter().filter(|e| e.spool_pos.unwrap().segment == first).count() as u64;
    assert!(in_first > 1 && in_first < 17, "{in_first} of 17 in the first segment");
    let files = segment_files(&dir);
    let len = std::fs::metadata(&files[0]).unwrap().len();
    OpenOptions::new().write(true).open(&files[0]).unwrap().set_len(len - 1).unwrap();
    let rewound = s.rewind();
    assert_eq!(rewound.records(), 16, "every record but the one cut");
    s.undo_rewind(rewound);
    s.commit(batch[16].spool_pos.unwrap()).unwrap();
    assert_eq!(seqs(&read_all(&mut s)), (17..20).collect::<Vec<_>>());
}

/// Spooling on after the directory was deleted (Redis down, nothing read, synced or created): the
/// spool notices within a second, so what it flushes from then on survives a SIGKILL.
#[test]
fn a_deleted_directory_is_noticed_while_spooling() {
    let (_root, dir, budget, mut s) = spool_of(10, env);
    std::fs::remove_dir_all(&dir).unwrap();
    s.checked_at -= DELETION_CHECK_EVERY; // a second later
    for i in 10..15 {
        s.append(&env("a", i)).unwrap();
    }
    s.flush().unwrap();
    assert_eq!(segment_files(&dir).len(), 1, "the segment is back on disk");
    std::mem::forget(s); // a SIGKILL: no flush, no sync on the way out
    let (mut s, r) = LaneSpool::open(&dir, SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!((r.records, budget.lost()), (15, 0));
    assert_eq!(seqs(&read_all(&mut s)), (0..15).collect::<Vec<_>>());
}

/// Every way in to the recovery at once: records buffered, the once-a-second look due, and a
/// sync. The segment is put back once, whole (a second, nested recovery used to copy the put
/// back file onto itself and leave it empty).
#[test]
fn a_recovery_started_from_a_sync_with_the_look_due_puts_the_segment_back_whole() {
    let (_root, dir, budget, mut s) = spool_of(10, env);
    for i in 10..15 {
        s.append(&env("a", i)).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    s.checked_at -= DELETION_CHECK_EVERY;
    s.sync().unwrap();
    std::mem::forget(s);
    let (mut s, r) = LaneSpool::open(&dir, SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!((r.records, budget.lost()), (15, 0));
    assert_eq!(seqs(&read_all(&mut s)), (0..15).collect::<Vec<_>>());
}

/// Replaces a segment file with its first `tenths` tenths (cut inside a record, as a careless
/// copy or restore would leave it).
fn cut_short(file: &Path, tenths: usize) {
    let bytes = std::fs::read(file).unwrap();
    std::fs::remove_file(file).unwrap();
    std::fs::write(file, &bytes[..bytes.len() * tenths / 10]).unwrap();
}

/// The segment being appended to replaced by a shorter file: the spool's own handle has all of
/// it, so it is put back whole and nothing is lost.
#[test]
fn a_tail_replaced_under_the_agent_is_put_back_whole() {
    let (_root, dir, budget, mut s) = spool_of(10, env);
    cut_short(&segment_files(&dir)[0], 6);
    s.append(&env("a", 10)).unwrap();
    assert_eq!(seqs(&read_all(&mut s)), (0..11).collect::<Vec<_>>());
    assert_eq!(budget.lost(), 0);
}

/// A closed segment cut short under the agent, with no handle to put it back from: its whole
/// records are read, the rest counted lost, and reading goes on to the next segment.
#[test]
fn a_closed_segment_cut_short_is_read_to_its_last_whole_record() {
    let (_root, dir, budget, mut s) = spool_of(20, big);
    let first = segment_files(&dir).remove(0);
    let (_, in_first, _) = super::files::verify_segment(&first, 0).unwrap();
    cut_short(&first, 6);
    let got = seqs(&read_all(&mut s));
    let kept = got.iter().take_while(|&&i| i < in_first).count() as u64;
    assert!(kept > 0 && kept < in_first, "{got:?}");
    let want: Vec<u64> = (0..kept).chain(in_first..20).collect();
    assert_eq!(got, want, "the whole records of the cut segment, then the next segment");
    assert_eq!(budget.lost(), in_first - kept);
    assert_eq!((s.unread(), budget.events()), (0, 0));
}

/// Events put in front after the directory was deleted (a spill) land in the recreated one.
#[test]
fn a_spill_after_the_directory_was_deleted_is_kept() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("lane-0");
    let (mut s, _) = LaneSpool::open(&dir, SpoolBudget::new(1 << 30)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let older: Vec<Envelope> = (0..5).map(|i| env("a", i)).collect();
    s.prepend(&older).unwrap();
    s.append(&env("a", 5)).unwrap();
    s.sync().unwrap();
    drop(s);
    let (mut s, r) = LaneSpool::open(&dir, SpoolBudget::new(1 << 30)).unwrap();
    assert_eq!(r.records, 6);
    assert_eq!(seqs(&read_all(&mut s)), (0..6).collect::<Vec<_>>());
}

/// What a lane does to its spool, in any order: append, read a batch, acknowledge part of what
/// is in flight, spill (what is in flight is read again, behind new events put in front), and
/// restart the agent.
#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Read(u8),
    Commit(u8),
    Spill(u8),
    Reopen,
    /// The directory deleted under the spool (the last operation of a case).
    DeleteDir,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1u8..40).prop_map(Op::Append),
        4 => (1u8..30).prop_map(Op::Read),
        3 => any::<u8>().prop_map(Op::Commit),
        2 => (0u8..5).prop_map(Op::Spill),
        1 => Just(Op::Reopen),
        1 => Just(Op::DeleteDir),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

    /// The spool against a model: every event read back exactly once after it was last in
    /// flight, in order, and `unread` exact, whatever the lane did. With the directory deleted
    /// under it: what is read back is the model's events in order less some, exactly as many
    /// as it counts lost, then every event appended after the deletion.
    #[test]
    fn the_spool_reads_what_a_model_of_it_says(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut budget = SpoolBudget::new(1 << 30);
        let (mut s, _) = LaneSpool::open(dir.path(), budget.clone()).unwrap();
        let mut next = 0u64;
        let mut unread: std::collections::VecDeque<u64> = Default::default();
        let mut in_flight: Vec<Envelope> = Vec::new();
        for op in ops {
            match op {
                Op::Append(n) => {
                    for _ in 0..n {
                        s.append(&env("a", next)).unwrap();
                        unread.push_back(next);
                        next += 1;
                    }
                }
                Op::Read(n) => {
                    let mut out = Vec::new();
                    s.read_batch(n as usize, &mut out).unwrap();
                    let want: Vec<u64> = unread.drain(..(n as usize).min(unread.len())).collect();
                    proptest::prop_assert_eq!(seqs(&out), want);
                    in_flight.extend(out);
                }
                Op::Commit(j) if !in_flight.is_empty() => {
                    let j = j as usize % in_flight.len();
                    s.commit(in_flight[j].spool_pos.unwrap()).unwrap();
                    in_flight.drain(..=j);
                }
                Op::Commit(_) => {}
                Op::Spill(m) => {
                    s.rewind();
                    let moving: Vec<Envelope> = (0..m as u64).map(|i| env("a", next + i)).collect();
                    s.prepend(&moving).unwrap();
                    let mut front: std::collections::VecDeque<u64> = (next..next + m as u64).collect();
                    next += m as u64;
                    front.extend(seqs(&in_flight));
                    front.extend(unread.drain(..));
                    unread = front;
                    in_flight.clear();
                }
                Op::DeleteDir => {
                    std::fs::remove_dir_all(dir.path()).unwrap();
                    let after: Vec<u64> = (next..next + 3).collect();
                    for &i in &after {
                        s.append(&env("a", i)).unwrap();
                    }
                    let rest = seqs(&read_all(&mut s));
                    let lost = budget.lost();
                    proptest::prop_assert!(rest.ends_with(&after), "appended after the deletion: {:?}", rest);
                    let kept = &rest[..rest.len() - after.len()];
                    let mut model = unread.iter();
                    proptest::prop_assert!(kept.iter().all(|k| model.any(|m| m == k)), "{:?} in order within {:?}", kept, unread);
                    proptest::prop_assert_eq!(kept.len() as u64 + lost, unread.len() as u64);
                    proptest::prop_assert_eq!((s.unread(), budget.events()), (0, 0));
                    return Ok(());
                }
                Op::Reopen => {
                    drop(s);
                    budget = SpoolBudget::new(1 << 30);
                    s = LaneSpool::open(dir.path(), budget.clone()).unwrap().0;
                    let mut front: std::collections::VecDeque<u64> = seqs(&in_flight).into_iter().collect();
                    front.extend(unread.drain(..));
                    unread = front;
                    in_flight.clear();
                }
            }
            proptest::prop_assert_eq!(s.unread(), unread.len() as u64);
        }
        let rest = read_all(&mut s);
        proptest::prop_assert_eq!(seqs(&rest), Vec::from(unread));
    }
}
