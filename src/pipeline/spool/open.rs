//! Opening every lane's spool at start-up, and moving what an earlier run spooled onto a
//! different number of lanes (`WRITER_WORKERS` changed) onto the new ones, in order.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{record, LaneSpool, SpoolBudget};

/// Opens one spool per lane under `dir`. If the spool was written with a different number of
/// lanes (`WRITER_WORKERS` changed), every unread event is re-partitioned onto the new lanes
/// first, in order, so each call's events stay on one lane and in order.
pub(crate) fn open_lanes(
    dir: &Path,
    lanes: usize,
    budget: Arc<SpoolBudget>,
    v1_streams: &record::V1Streams,
) -> io::Result<Vec<LaneSpool>> {
    fs::create_dir_all(dir)?;
    let count_file = dir.join("lanes");
    let previous: Option<usize> = fs::read_to_string(&count_file).ok().and_then(|s| s.trim().parse().ok());
    let mut old_dirs = Vec::new();
    if previous.is_some_and(|p| p != lanes) {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(index) = name.strip_prefix("lane-") {
                let moved = dir.join(format!("repartition-{index}"));
                fs::rename(entry.path(), &moved)?;
                old_dirs.push(moved);
            }
        }
        old_dirs.sort();
    }
    let mut spools = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let (mut spool, recovery) = LaneSpool::open(&dir.join(format!("lane-{lane}")), budget.clone())?;
        if recovery.records > 0 || recovery.truncated_bytes > 0 {
            tracing::info!(
                lane,
                events = recovery.records,
                segments = recovery.segments,
                truncated_bytes = recovery.truncated_bytes,
                "spool holds events from an earlier run; they are written first"
            );
        }
        spool.set_v1_streams(v1_streams.clone());
        spool.set_lane_count(count_file.clone(), lanes);
        spools.push(spool);
    }
    for old in old_dirs {
        let unlimited = SpoolBudget::new(u64::MAX);
        let (mut spool, _) = LaneSpool::open(&old, unlimited)?;
        spool.set_v1_streams(v1_streams.clone());
        let mut moved = 0u64;
        let mut batch = Vec::new();
        while spool.read_batch(1024, &mut batch)? > 0 {
            for mut envelope in batch.drain(..) {
                envelope.spool_pos = None;
                let lane = crate::pipeline::routing::lane_for(&envelope.ordering_key, lanes);
                spools[lane].append(&envelope).map_err(|e| io::Error::other(e.to_string()))?;
                moved += 1;
            }
        }
        for spool in &mut spools {
            spool.sync()?;
        }
        fs::remove_dir_all(&old)?;
        tracing::warn!(from = %old.display(), moved, lanes, "WRITER_WORKERS changed: spooled events re-partitioned onto the new lanes");
    }
    fs::write(&count_file, format!("{lanes}\n"))?;
    Ok(spools)
}
