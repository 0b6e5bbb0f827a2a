//! Returning freed heap memory to the operating system.
//!
//! glibc's allocator keeps memory freed in the middle of its heaps, so after a burst of
//! connections closes, the process stays as large as at the burst's peak. A background task
//! calls `malloc_trim` at an interval, which hands free pages back with `madvise`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Interval between trims.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Trims the heap every [`TRIM_INTERVAL`] until `shutdown`.
pub async fn trim_periodically(shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(TRIM_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => trim(),
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: malloc_trim takes no pointers, is thread-safe in glibc and only releases pages
    // the allocator no longer uses.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Bytes the allocator has handed out and not yet had back, or `None` where it cannot tell.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use() -> Option<u64> {
    // The layout of `struct mallinfo2` in glibc 2.33 and later: ten `size_t` fields.
    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    extern "C" {
        fn mallinfo2() -> MallInfo2;
    }
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let info = unsafe { mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use() -> Option<u64> {
    None
}
