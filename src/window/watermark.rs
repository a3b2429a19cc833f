//! Watermarks from bounded out-of-orderness, per source partition.
//!
//! In: for each batch, the partition it came from and its largest event time; the processing
//! time from an injected clock. Out: the source's watermark — no event older than it is
//! expected any more — as the smallest per-partition `max event time − max out-of-orderness`
//! over the partitions that are not idle. A partition with no event for `idle_timeout` of
//! processing time stops holding the watermark back until it sends again; when every partition
//! is idle, the watermark follows the most advanced one; a partition known to have events on
//! their way is [held](WatermarkTracker::hold) from going idle. The watermark never goes
//! backwards.

use std::collections::{BTreeMap, HashMap};

/// Per-source watermark state.
#[derive(Debug, Clone)]
pub struct WatermarkTracker {
    max_out_of_orderness: i64,
    idle_timeout: i64,
    partitions: HashMap<i32, PartitionClock>,
    current: i64,
}

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_event_time: i64,
    last_seen: i64,
}

impl WatermarkTracker {
    /// Times in µs. Until some partition has seen an event, the watermark is `i64::MIN`.
    pub fn new(max_out_of_orderness: i64, idle_timeout: i64) -> Self {
        WatermarkTracker {
            max_out_of_orderness,
            idle_timeout,
            partitions: HashMap::new(),
            current: i64::MIN,
        }
    }

    /// The state a checkpoint keeps: the watermark, and per partition the newest event time.
    pub fn snapshot(&self) -> (i64, BTreeMap<i32, i64>) {
        let partitions = self
            .partitions
            .iter()
            .map(|(&p, c)| (p, c.max_event_time))
            .collect();
        (self.current, partitions)
    }

    /// Restores a [`snapshot`](Self::snapshot); each partition counts as last seen at `now`.
    pub fn restore(&mut self, current: i64, partitions: &BTreeMap<i32, i64>, now: i64) {
        self.current = current;
        self.partitions = partitions
            .iter()
            .map(|(&p, &max_event_time)| {
                let clock = PartitionClock {
                    max_event_time,
                    last_seen: now,
                };
                (p, clock)
            })
            .collect();
    }

    /// The watermark as last computed (no clock involved).
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Raises the watermark to at least `watermark` (a replayed cycle keeps the one it had).
    pub fn raise_to(&mut self, watermark: i64) {
        self.current = self.current.max(watermark);
    }

    /// Registers the partitions a source reads, at processing time `now`: one that has not
    /// delivered an event yet holds the watermark back (at its minimum) until it goes idle.
    pub fn assign(&mut self, partitions: &[i32], now: i64) {
        for &p in partitions {
            self.partitions.entry(p).or_insert(PartitionClock {
                max_event_time: i64::MIN,
                last_seen: now,
            });
        }
    }

    /// Stops `partition` holding the watermark back while it has delivered no event: for a
    /// backfill, a partition with nothing to read will not speak before the run ends.
    pub fn release_silent(&mut self, partition: i32) {
        if self
            .partitions
            .get(&partition)
            .is_some_and(|c| c.max_event_time == i64::MIN)
        {
            self.partitions.remove(&partition);
        }
    }

    /// The partitions it follows.
    pub fn partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.partitions.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// Keeps `partition` from going idle at processing time `now`, without an event: its
    /// events are known to be on their way (a re-keyed source's partition whose forwarder
    /// stalled), so the watermark waits for them.
    pub fn hold(&mut self, partition: i32, now: i64) {
        if let Some(clock) = self.partitions.get_mut(&partition) {
            clock.last_seen = now;
        }
    }

    /// Records that `partition` delivered events up to `max_event_time` at processing time `now`.
    pub fn observe(&mut self, partition: i32, max_event_time: i64, now: i64) {
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_time,
            last_seen: now,
        });
        clock.max_event_time = clock.max_event_time.max(max_event_time);
        clock.last_seen = now;
    }

    /// The watermark at processing time `now`.
    pub fn watermark(&mut self, now: i64) -> i64 {
        self.current = self.peek(now);
        self.current
    }

    /// What [`watermark`](Self::watermark) would give at `now`, without moving it.
    pub fn peek(&self, now: i64) -> i64 {
        let active = self
            .partitions
            .values()
            .filter(|c| now.saturating_sub(c.last_seen) < self.idle_timeout)
            .map(|c| c.max_event_time)
            .min();
        let candidate = active.or_else(|| self.partitions.values().map(|c| c.max_event_time).max());
        match candidate {
            Some(t) => self
                .current
                .max(t.saturating_sub(self.max_out_of_orderness)),
            None => self.current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn slowest_active_partition_holds_the_watermark() {
        let mut w = WatermarkTracker::new(5 * S, 30 * S);
        assert_eq!(w.watermark(0), i64::MIN);
        w.observe(0, 100 * S, 0);
        w.observe(1, 60 * S, 0);
        assert_eq!(w.watermark(1), 55 * S);
        w.observe(1, 200 * S, 2 * S);
        assert_eq!(w.watermark(2 * S), 95 * S);
        // An older event does not move it back.
        w.observe(0, 10 * S, 3 * S);
        assert_eq!(w.watermark(3 * S), 95 * S);
    }

    #[test]
    fn idle_partition_stops_holding_it_back_until_it_speaks() {
        let mut w = WatermarkTracker::new(0, 30 * S);
        w.observe(0, 100 * S, 0);
        w.observe(1, 10 * S, 0);
        assert_eq!(w.watermark(S), 10 * S);
        w.observe(0, 150 * S, 20 * S);
        // Partition 1 has been silent for 30 s of processing time: idle.
        assert_eq!(w.watermark(30 * S), 150 * S);
        // It speaks again, with an old event: it holds the watermark, which does not regress.
        w.observe(1, 120 * S, 31 * S);
        assert_eq!(w.watermark(31 * S), 150 * S);
        w.observe(0, 300 * S, 32 * S);
        assert_eq!(w.watermark(32 * S), 150 * S);
        w.observe(1, 250 * S, 33 * S);
        assert_eq!(w.watermark(33 * S), 250 * S);
    }

    #[test]
    fn snapshot_restores_the_watermark_and_partition_clocks() {
        let mut w = WatermarkTracker::new(S, 10 * S);
        w.observe(0, 50 * S, 0);
        w.observe(1, 80 * S, 0);
        assert_eq!(w.watermark(S), 49 * S);
        let (current, partitions) = w.snapshot();
        let mut restored = WatermarkTracker::new(S, 10 * S);
        restored.restore(current, &partitions, 500 * S);
        // Both partitions count as active again: the slower one holds the watermark.
        assert_eq!(restored.watermark(501 * S), 49 * S);
        restored.observe(0, 90 * S, 502 * S);
        assert_eq!(restored.watermark(502 * S), 79 * S);
        restored.raise_to(85 * S);
        assert_eq!(restored.watermark(502 * S), 85 * S);
    }

    #[test]
    fn an_assigned_partition_holds_the_watermark_until_it_speaks_or_idles() {
        let mut w = WatermarkTracker::new(0, 30 * S);
        w.assign(&[0, 1], 0);
        w.observe(0, 100 * S, S);
        assert_eq!(w.watermark(2 * S), i64::MIN);
        w.observe(1, 40 * S, 3 * S);
        assert_eq!(w.watermark(3 * S), 40 * S);
        let mut quiet = WatermarkTracker::new(0, 30 * S);
        quiet.assign(&[0, 1], 0);
        quiet.observe(0, 100 * S, 29 * S);
        assert_eq!(quiet.watermark(29 * S), i64::MIN);
        assert_eq!(quiet.watermark(30 * S), 100 * S);
    }

    #[test]
    fn a_released_silent_partition_holds_nothing_back_but_one_that_spoke_still_does() {
        let mut w = WatermarkTracker::new(0, 30 * S);
        w.assign(&[0, 1, 2], 0);
        w.observe(0, 100 * S, 0);
        w.observe(2, 50 * S, 0);
        assert_eq!(w.watermark(S), i64::MIN);
        w.release_silent(1);
        w.release_silent(2);
        assert_eq!(w.watermark(S), 50 * S);
    }

    #[test]
    fn all_idle_follows_the_most_advanced() {
        let mut w = WatermarkTracker::new(S, 10 * S);
        w.observe(0, 50 * S, 0);
        w.observe(1, 80 * S, 0);
        assert_eq!(w.watermark(100 * S), 79 * S);
    }

    /// A held partition, whose events are known to be coming, keeps holding the watermark
    /// past its idle timeout; once no longer held, it goes idle as any other.
    #[test]
    fn a_held_partition_does_not_go_idle() {
        let mut w = WatermarkTracker::new(S, 30 * S);
        w.observe(0, 50 * S, 0);
        w.observe(1, 80 * S, 0);
        w.observe(1, 90 * S, 25 * S);
        w.hold(0, 25 * S);
        w.hold(7, 25 * S);
        assert_eq!(w.partitions(), [0, 1]);
        assert_eq!(w.watermark(40 * S), 49 * S);
        assert_eq!(w.watermark(60 * S), 89 * S);
    }
}
