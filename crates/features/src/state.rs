//! One entity's ring of slots.

use crate::names::METRICS;

const EMPTY: u32 = u32::MAX;
const N: usize = METRICS.len();
/// Slots per summary block. Long windows read block summaries instead of every slot.
pub(crate) const BLOCK: usize = 12;
/// Blocks per superblock. A window reads whole superblocks where it can, so the default 24 h
/// window merges a dozen summaries instead of two dozen: fewer cache lines, which is what an
/// event costs when the state of every entity does not fit in the CPU caches.
pub(crate) const SUPER: usize = 6;
/// Slots per superblock. A ring whose capacity is not a multiple of it (not the default 24 h
/// of 5-minute slots) has no superblocks and reads blocks only.
pub(crate) const SUPER_SLOTS: usize = BLOCK * SUPER;

/// Superblocks per metric in a ring of `cap` slots.
fn supers_per_ring(cap: usize) -> usize {
    if cap.is_multiple_of(SUPER_SLOTS) {
        cap / SUPER_SLOTS
    } else {
        0
    }
}

/// Merges `count` consecutive summaries of the ring of summaries `run`, from index `start`,
/// wrapping at its end.
#[inline]
fn merge_run(st: &mut BlockStat, run: &[BlockStat], start: usize, count: usize) {
    let mut i = start;
    for _ in 0..count {
        st.merge(&run[i]);
        i += 1;
        if i == run.len() {
            i = 0;
        }
    }
}

/// Sum, sum of squares, min, max and count of the observed values of one block of one metric.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockStat {
    pub sum: f64,
    pub sumsq: f64,
    pub min: f32,
    pub max: f32,
    pub n: u32,
}

impl BlockStat {
    pub const EMPTY: BlockStat = BlockStat {
        sum: 0.0,
        sumsq: 0.0,
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        n: 0,
    };

    #[inline]
    pub fn add(&mut self, v: f32) {
        if !v.is_nan() {
            let x = f64::from(v);
            self.sum += x;
            self.sumsq += x * x;
            self.n += 1;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    #[inline]
    pub fn merge(&mut self, o: &BlockStat) {
        self.sum += o.sum;
        self.sumsq += o.sumsq;
        self.n += o.n;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// A context value (capacity, replicas, cost) with the event time and offset that set it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Context {
    pub value: f64,
    pub ts_ms: i64,
    pub offset: u64,
    pub set: bool,
}

impl Context {
    /// Later event time wins, whatever the arrival order, so replays agree.
    pub fn offer(&mut self, v: Option<f64>, ts_ms: i64, offset: u64) {
        if let Some(v) = v {
            if !self.set || ts_ms > self.ts_ms || (ts_ms == self.ts_ms && offset < self.offset) {
                *self = Context {
                    value: v,
                    ts_ms,
                    offset,
                    set: true,
                };
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct EntityState {
    /// Metric-major rings: metric `m`, slot position `p` at `m * cap + p`. NaN = not observed.
    pub values: Box<[f32]>,
    /// Millisecond of the sample within its slot; `EMPTY` when the slot has no sample.
    pub slot_ts: Box<[u32]>,
    /// Smallest source offset that wrote the slot.
    pub slot_offset: Box<[u64]>,
    /// Metric-major block summaries: metric `m`, block `b` at `m * (cap / BLOCK) + b`.
    pub blocks: Box<[BlockStat]>,
    /// Metric-major superblock summaries (merges of `SUPER` consecutive blocks), metric `m`,
    /// superblock `s` at `m * supers_per_ring(cap) + s`. Empty when the ring has none.
    pub supers: Box<[BlockStat]>,
    pub newest_slot: i64,
    /// Ring position of `newest_slot`: positions of the slots the ring holds are found from it
    /// by a subtraction, not a division.
    pub newest_pos: usize,
    pub newest_ts: i64,
    /// cpu_cores, mem_bytes, replicas, cost_per_hour
    pub context: [Context; 4],
    /// Cached minimum of retained offsets; recomputed when `floor_dirty`.
    pub floor: u64,
    pub floor_dirty: bool,
}

pub(crate) enum Write {
    Written,
    Duplicate,
    TooLate { behind_slots: i64 },
}

impl EntityState {
    pub fn new(cap: usize, slot: i64) -> EntityState {
        EntityState {
            values: vec![f32::NAN; N * cap].into_boxed_slice(),
            slot_ts: vec![EMPTY; cap].into_boxed_slice(),
            slot_offset: vec![u64::MAX; cap].into_boxed_slice(),
            blocks: vec![BlockStat::EMPTY; N * (cap / BLOCK)].into_boxed_slice(),
            supers: vec![BlockStat::EMPTY; N * supers_per_ring(cap)].into_boxed_slice(),
            newest_slot: slot,
            newest_pos: slot.rem_euclid(cap as i64) as usize,
            newest_ts: i64::MIN,
            context: [Context::default(); 4],
            floor: u64::MAX,
            floor_dirty: false,
        }
    }

    pub fn heap_bytes(cap: usize) -> usize {
        N * cap * 4
            + cap * 4
            + cap * 8
            + N * (cap / BLOCK + supers_per_ring(cap)) * std::mem::size_of::<BlockStat>()
    }

    /// Recomputes the summaries of the block holding ring position `p`, and of its superblock.
    fn refresh_block(&mut self, p: usize) {
        let cap = self.cap();
        let nb = cap / BLOCK;
        let nsb = supers_per_ring(cap);
        let b = p / BLOCK;
        let sb = b / SUPER;
        for m in 0..N {
            let mut st = BlockStat::EMPTY;
            for &v in &self.values[m * cap + b * BLOCK..m * cap + (b + 1) * BLOCK] {
                st.add(v);
            }
            self.blocks[m * nb + b] = st;
            if nsb == 0 {
                continue;
            }
            let mut sup = BlockStat::EMPTY;
            for blk in &self.blocks[m * nb + sb * SUPER..m * nb + (sb + 1) * SUPER] {
                sup.merge(blk);
            }
            self.supers[m * nsb + sb] = sup;
        }
    }

    /// Prefetches the cache lines an event at `slot` will read, so that their misses overlap:
    /// the superblock summaries, and for every metric the recent slots (current value, lags,
    /// the current block), and the far end of each window (its partial block and the blocks of
    /// its superblock). `windows` are window lengths in slots.
    #[inline]
    pub fn prefetch(&self, slot: i64, windows: impl Iterator<Item = usize>, lags: usize) {
        use crate::prefetch;
        let cap = self.cap();
        let nb = cap / BLOCK;
        let lowest = (slot - cap as i64 + 1).max(self.lowest_slot());
        prefetch::slice(&self.supers);
        let p = self.pos(slot);
        prefetch::one(&self.slot_ts[p]);
        prefetch::one(&self.slot_offset[p]);
        let recent_lo = (slot - lags as i64 - 1)
            .min(slot - (p % BLOCK) as i64)
            .max(lowest);
        let has_supers = !self.supers.is_empty();
        // Ring positions are the same for every metric: each is computed once.
        let ring = |m: usize| &self.values[m * cap..(m + 1) * cap];
        let blocks = |m: usize| &self.blocks[m * nb..(m + 1) * nb];
        let mut s = recent_lo;
        while s < slot {
            let q = self.pos(s);
            for m in 0..N {
                prefetch::one(&ring(m)[q]);
            }
            s += 16;
        }
        let here_super = p / SUPER_SLOTS * SUPER;
        for m in 0..N {
            prefetch::one(&ring(m)[p]);
            if has_supers {
                prefetch::slice(&blocks(m)[here_super..here_super + SUPER]);
            } else {
                prefetch::slice(blocks(m));
            }
        }
        for w in windows {
            let q = self.pos((slot - w as i64 + 1).max(lowest));
            let block_start = q / BLOCK * BLOCK;
            let sb = q / SUPER_SLOTS * SUPER;
            for m in 0..N {
                prefetch::slice(&ring(m)[block_start..block_start + BLOCK]);
                if has_supers {
                    prefetch::slice(&blocks(m)[sb..sb + SUPER]);
                }
            }
        }
    }

    #[inline]
    pub fn cap(&self) -> usize {
        self.slot_ts.len()
    }

    /// Ring position of `slot` (`slot mod cap`).
    #[inline]
    pub fn pos(&self, slot: i64) -> usize {
        let cap = self.cap();
        let d = self.newest_slot.wrapping_sub(slot);
        if (0..cap as i64).contains(&d) {
            // Held by the ring: an offset back from the newest slot's position.
            let d = d as usize;
            if d <= self.newest_pos {
                self.newest_pos - d
            } else {
                self.newest_pos + cap - d
            }
        } else {
            slot.rem_euclid(cap as i64) as usize
        }
    }

    /// Oldest slot the ring still holds.
    #[inline]
    pub fn lowest_slot(&self) -> i64 {
        self.newest_slot - self.cap() as i64 + 1
    }

    fn clear_pos(&mut self, p: usize) {
        let cap = self.cap();
        if self.slot_ts[p] != EMPTY {
            if self.slot_offset[p] == self.floor {
                self.floor_dirty = true;
            }
            self.slot_ts[p] = EMPTY;
            self.slot_offset[p] = u64::MAX;
            for m in 0..N {
                self.values[m * cap + p] = f32::NAN;
            }
        }
    }

    fn advance(&mut self, slot: i64) {
        let cap = self.cap() as i64;
        if slot - self.newest_slot >= cap {
            for p in 0..cap as usize {
                self.clear_pos(p);
            }
            self.blocks.fill(BlockStat::EMPTY);
            self.supers.fill(BlockStat::EMPTY);
        } else {
            for s in self.newest_slot + 1..=slot {
                let p = self.pos(s);
                self.clear_pos(p);
            }
            // Refresh each touched block once, after all its slots were cleared; the block of
            // `slot` itself is refreshed by the write that follows.
            let target_block = self.pos(slot) / BLOCK;
            let mut s = self.newest_slot + 1;
            while s <= slot {
                let p = self.pos(s);
                if p / BLOCK != target_block {
                    self.refresh_block(p);
                }
                s = (s.div_euclid(BLOCK as i64) + 1) * BLOCK as i64;
            }
        }
        self.newest_slot = slot;
        self.newest_pos = slot.rem_euclid(cap) as usize;
    }

    pub fn write(
        &mut self,
        slot: i64,
        within: u32,
        ts_ms: i64,
        metrics: &[Option<f64>; N],
        offset: u64,
        lateness_slots: i64,
    ) -> Write {
        if slot > self.newest_slot {
            self.advance(slot);
        } else if slot < self.newest_slot - lateness_slots {
            return Write::TooLate {
                behind_slots: self.newest_slot - slot,
            };
        }
        let p = self.pos(slot);
        let cap = self.cap();
        let existing = self.slot_ts[p];
        if existing == within {
            return Write::Duplicate;
        }
        if existing == EMPTY || within > existing {
            self.slot_ts[p] = within;
            for (m, v) in metrics.iter().enumerate() {
                self.values[m * cap + p] = v.map_or(f32::NAN, |v| v as f32);
            }
            self.refresh_block(p);
        }
        if offset < self.slot_offset[p] {
            self.slot_offset[p] = offset;
        }
        if offset < self.floor {
            self.floor = offset;
        }
        self.newest_ts = self.newest_ts.max(ts_ms);
        Write::Written
    }

    /// Smallest offset still retained by this entity (slots and live context).
    pub fn floor(&mut self, interval_ms: i64) -> u64 {
        if self.floor_dirty {
            self.floor = self.slot_offset.iter().copied().min().unwrap_or(u64::MAX);
            self.floor_dirty = false;
        }
        let lowest_ms = self.lowest_slot() * interval_ms;
        let ctx = self
            .context
            .iter()
            .filter(|c| c.set && c.ts_ms >= lowest_ms)
            .map(|c| c.offset)
            .min()
            .unwrap_or(u64::MAX);
        self.floor.min(ctx)
    }

    /// Statistics of metric `m` over slots `lo..=hi` (absolute, within the ring): partial
    /// blocks are scanned, whole blocks read from their summaries.
    #[inline]
    pub fn window(&self, m: usize, lo: i64, hi: i64) -> BlockStat {
        let cap = self.cap();
        let nb = cap / BLOCK;
        let ring = &self.values[m * cap..(m + 1) * cap];
        let blocks = &self.blocks[m * nb..(m + 1) * nb];
        let mut st = BlockStat::EMPTY;
        if lo > hi {
            return st;
        }
        let b = BLOCK as i64;
        let (blo, bhi) = (lo.div_euclid(b), hi.div_euclid(b));
        let scan = |st: &mut BlockStat, from: i64, to: i64| {
            let (pf, pt) = (self.pos(from), self.pos(to));
            // A run within one block never wraps the ring.
            for &v in &ring[pf..=pt] {
                st.add(v);
            }
        };
        if blo == bhi {
            scan(&mut st, lo, hi);
            return st;
        }
        scan(&mut st, lo, (blo + 1) * b - 1);
        if bhi > blo + 1 {
            // Whole blocks `first..=last` (absolute block numbers): whole superblocks where
            // they fit, single blocks at either end.
            let (first, last) = (blo + 1, bhi - 1);
            let sp = SUPER as i64;
            let s_first = (first + sp - 1).div_euclid(sp);
            let s_last = (last + 1).div_euclid(sp) - 1;
            let nsb = supers_per_ring(cap);
            if nsb > 0 && s_first <= s_last {
                self.merge_blocks(&mut st, blocks, first, s_first * sp - 1);
                // The ring is superblock-aligned (`cap` is a multiple of SUPER_SLOTS): a
                // slot's superblock is its position over SUPER_SLOTS.
                merge_run(
                    &mut st,
                    &self.supers[m * nsb..(m + 1) * nsb],
                    self.pos(s_first * SUPER_SLOTS as i64) / SUPER_SLOTS,
                    (s_last - s_first + 1) as usize,
                );
                self.merge_blocks(&mut st, blocks, (s_last + 1) * sp, last);
            } else {
                self.merge_blocks(&mut st, blocks, first, last);
            }
        }
        scan(&mut st, bhi * b, hi);
        st
    }

    /// Merges the summaries of the whole blocks `first..=last` (absolute block numbers) of one
    /// metric's `blocks` into `st`.
    #[inline]
    fn merge_blocks(&self, st: &mut BlockStat, blocks: &[BlockStat], first: i64, last: i64) {
        if first > last {
            return;
        }
        // The ring is block-aligned (`cap` is a multiple of BLOCK): a slot's block is its
        // position over BLOCK.
        let start = self.pos(first * BLOCK as i64) / BLOCK;
        merge_run(st, blocks, start, (last - first + 1) as usize);
    }

    /// The value of metric `m` at `slot`, or the most recent observed value before it that the
    /// ring still holds.
    #[inline]
    pub fn ffill(&self, m: usize, slot: i64) -> Option<f32> {
        let cap = self.cap();
        let ring = &self.values[m * cap..(m + 1) * cap];
        let lowest = self.lowest_slot();
        let mut s = slot.min(self.newest_slot);
        if s < lowest {
            return None;
        }
        let mut p = self.pos(s);
        while s >= lowest {
            let v = ring[p];
            if !v.is_nan() {
                return Some(v);
            }
            s -= 1;
            p = if p == 0 { cap - 1 } else { p - 1 };
        }
        None
    }
}
