//! Cache prefetch hints for the entity state an event is about to read.
//!
//! The featurizer's working set is every entity's ring (about 11 KB each), far larger than the
//! CPU caches, so an event's cost is dominated by the cache lines it misses. Announcing them
//! all at the start lets the misses overlap instead of being taken one after the other.
#![allow(unsafe_code)]

/// Asks the CPU to start loading every cache line of `s` into the cache. A hint only: it has no
/// effect on the program's results.
#[inline(always)]
pub(crate) fn slice<T>(s: &[T]) {
    let bytes = std::mem::size_of_val(s);
    let p = s.as_ptr().cast::<u8>();
    let mut off = 0;
    while off < bytes {
        line(p.wrapping_add(off));
        off += 64;
    }
    if bytes > 0 {
        // The last byte's line, when `s` does not start on a line boundary.
        line(p.wrapping_add(bytes - 1));
    }
}

/// Asks the CPU to start loading the cache line holding `r`.
#[inline(always)]
pub(crate) fn one<T>(r: &T) {
    line((r as *const T).cast());
}

#[inline(always)]
fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint that never dereferences its operand architecturally and
    // never faults, whatever the address; `p` is derived from a live slice anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
