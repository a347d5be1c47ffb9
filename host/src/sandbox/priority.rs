//! Compiling runs below the serving threads: Cranelift's worker threads
//! (rayon's global pool, which wasmtime's parallel compilation uses) and
//! the thread that drives a background compile get a nice value of
//! [`COMPILE_NICE`], so when the cores are busy, rooms come first.

/// The nice value of compile threads (0 is normal, 19 the lowest).
const COMPILE_NICE: i32 = 10;

/// Lowers the calling thread's priority (Linux: per thread).
pub(super) fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    {
        // SAFETY: setpriority takes plain integers; `who` = 0 is the calling
        // thread on Linux. A failure leaves the priority as it was.
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, COMPILE_NICE) };
        if result != 0 {
            tracing::debug!("could not lower a compile thread's priority");
        }
    }
}

/// Builds rayon's global pool with lowered threads. Once per process: a
/// second call (another host in the same test process) finds it built.
pub(super) fn lower_compile_workers() {
    let _ = rayon::ThreadPoolBuilder::new().start_handler(|_| lower_this_thread()).build_global();
}
