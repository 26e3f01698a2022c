//! Freed memory back to the operating system after a burst of allocations.
//!
//! mimalloc (the binary's global allocator) returns the pages freed in a thread's heap to the
//! OS only when that thread allocates or frees again, after a delay. The start-up load of a
//! large store (100,000 merchants: the file read, its parse, a copy for the cache) frees
//! tens of MiB on the thread that did it, which then sits idle in the blocking pool or exits,
//! so that memory stayed resident for the life of the process (`benches/load.sh scale`).
//! [`release_freed`] asks mimalloc to collect now: the calling thread's free pages and the
//! purges every heap has scheduled. It costs a walk over the heap (milliseconds), so it is for
//! the ends of rare bulk operations, never the request path. Harmless when mimalloc is not
//! the global allocator (tests): it collects mimalloc's own, then empty, heap.

/// Returns the calling thread's freed pages (and every delayed purge) to the OS.
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
