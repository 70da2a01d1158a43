//! Whether the machine has a CPU to spare for the store thread's deferrable
//! work (the search pass when it is far behind), judged from the process's
//! own CPU clocks over a short window.
//!
//! The store thread having nothing queued does not mean the machine is
//! idle: on one core, the network threads and the message log share it,
//! and every moment the pass takes during a burst is taken from the
//! relays (chatbench's pairs with history on one core: 0.88 M deliveries
//! a second with the pass running once far behind, 1.00 M with it waiting;
//! bench/README.md, twenty-seventh round). On a machine with cores to
//! spare, the same moments cost the relays nothing.

use std::time::{Duration, Instant};

/// How long a window the rest of the process's CPU use is measured over.
const WINDOW: Duration = Duration::from_millis(100);

/// CPUs the rest of the process must have left idle over a window for
/// there to be room: half a CPU, so that work it then does is not taken
/// from threads that were waiting for one.
const SPARE_CPUS: f64 = 0.5;

/// The process's CPU clocks at one moment.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    /// CPU time of the whole process.
    process: Duration,
    /// CPU time of the thread that judges (its own work is what would use
    /// the room, so it is not counted against it).
    thread: Duration,
}

impl Mark {
    fn now(at: Instant) -> Option<Mark> {
        Some(Mark {
            at,
            process: cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)?,
            thread: cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)?,
        })
    }
}

/// Judges, once a [`WINDOW`], whether the rest of the process leaves a
/// CPU to spare. Owned by one thread: the thread's own CPU time is read
/// from the thread that asks.
#[derive(Debug)]
pub(super) struct CpuRoom {
    /// CPUs this process may run on (its affinity and cgroup quota).
    cpus: f64,
    last: Option<Mark>,
    spare: bool,
}

impl CpuRoom {
    /// No room is known until a window has passed.
    pub(super) fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            // Exact: no machine has 2^53 CPUs.
            cpus: cpus as f64,
            last: None,
            spare: false,
        }
    }

    /// Whether the process's other threads left at least [`SPARE_CPUS`]
    /// idle over the last window (the verdict is kept for a window). On a
    /// system whose clocks cannot be read, never.
    pub(super) fn spare(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last.at) < WINDOW)
        {
            return self.spare;
        }
        let Some(mark) = Mark::now(now) else {
            self.spare = false;
            return false;
        };
        if let Some(last) = self.last {
            self.spare = spare_between(self.cpus, &last, &mark);
        }
        self.last = Some(mark);
        self.spare
    }
}

/// Whether, between two marks, the process's threads other than the
/// judging one left at least [`SPARE_CPUS`] of `cpus` idle.
fn spare_between(cpus: f64, from: &Mark, to: &Mark) -> bool {
    let wall = to.at.saturating_duration_since(from.at).as_secs_f64();
    if wall <= 0.0 {
        return false;
    }
    let own = to.thread.saturating_sub(from.thread);
    let others = to
        .process
        .saturating_sub(from.process)
        .saturating_sub(own)
        .as_secs_f64();
    cpus * wall - others >= SPARE_CPUS * wall
}

/// A CPU-time clock of this process or thread; `None` if it cannot be read.
fn cpu_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(at: Instant, ms: u64, process_ms: u64, thread_ms: u64) -> Mark {
        Mark {
            at: at + Duration::from_millis(ms),
            process: Duration::from_millis(process_ms),
            thread: Duration::from_millis(thread_ms),
        }
    }

    /// One CPU: room while the other threads use at most half of it; the
    /// judging thread's own use does not count. Two CPUs: a busy core
    /// leaves one to spare.
    #[test]
    fn room_is_what_the_other_threads_leave_idle() {
        let t = Instant::now();
        let from = mark(t, 0, 1000, 100);
        // 100 ms: the others used 95 ms (a burst on one core).
        assert!(!spare_between(1.0, &from, &mark(t, 100, 1095, 100)));
        // The others 40 ms, this thread 55 ms: the others leave 60 ms.
        assert!(spare_between(1.0, &from, &mark(t, 100, 1095, 155)));
        // Exactly half a CPU left: room.
        assert!(spare_between(1.0, &from, &mark(t, 100, 1050, 100)));
        assert!(!spare_between(1.0, &from, &mark(t, 100, 1051, 100)));
        // Two CPUs, one of them busy: room.
        assert!(spare_between(2.0, &from, &mark(t, 100, 1100, 100)));
        assert!(!spare_between(2.0, &from, &mark(t, 100, 1160, 100)));
        // No time passed: no verdict of room.
        assert!(!spare_between(4.0, &from, &mark(t, 0, 1000, 100)));
    }

    /// The clocks are read, a verdict waits for a window, and is kept for
    /// one. (So many CPUs that whatever the test's other threads use,
    /// there is room: the verdict itself is `spare_between`'s, above.)
    #[test]
    fn the_clocks_are_read_and_judged_once_a_window() {
        let mut room = CpuRoom::new();
        room.cpus = 1e6;
        let start = Instant::now();
        assert!(!room.spare(start), "no window has passed");
        assert!(!room.spare(start + WINDOW / 2), "nor yet");
        assert!(room.spare(start + WINDOW), "the clocks were read");
        room.cpus = 0.0;
        assert!(room.spare(start + WINDOW * 3 / 2), "kept for a window");
        assert!(!room.spare(start + WINDOW * 2), "judged anew");
    }
}
