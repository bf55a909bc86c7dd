//! The `gatehouse` binary: parse the command line and hand off to the library.

use std::process::ExitCode;

/// jemalloc: requests allocate and free many small objects (headers,
/// futures, log lines); glibc's allocator took about 15 % of a JWKS
/// request's CPU time, and with jemalloc that request takes 19 % less.
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them): one arena per CPU, where the default
/// four per CPU held about a megabyte more of an idle server's memory.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
// SAFETY: jemalloc reads this symbol as a `const char *`; a reference to an
// array is a thin pointer to its first byte, and the text ends with a NUL.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 20] = b"percpu_arena:percpu\0";

#[tokio::main]
async fn main() -> ExitCode {
    gatehouse::cli::main(release_start_up_memory).await
}

/// Hands the pages start-up freed (migrations, the OpenAPI document, key
/// loading) back to the system at once; jemalloc would keep them for its
/// next allocations, and an idle server would hold them for good.
fn release_start_up_memory() {
    #[cfg(target_os = "linux")]
    {
        /// `MALLCTL_ARENAS_ALL`: every arena.
        const PURGE_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";
        // SAFETY: "arena.<i>.purge" takes no old or new value, so the null
        // pointers and zero length are what mallctl(3) expects for it; the
        // name is a valid NUL-terminated string that outlives the call.
        #[allow(unsafe_code)]
        let _ = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL_ARENAS.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
    }
}
