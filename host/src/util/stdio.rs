//! Owning stdout for a protocol: the MCP stdio transport and op worker processes write their
//! protocol to a private duplicate of fd 1, and fd 1 itself points at stderr, so whatever else
//! prints to stdout (an op's `println!`, a C library's `printf`) lands in the log instead of
//! corrupting the stream. Knows nothing of the protocols.

use std::fs::File;

/// Duplicates fd 1 for the caller and points fd 1 at stderr. Call it before plugins load.
#[cfg(unix)]
pub(crate) fn take_stdout() -> Result<File, String> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let _ = std::io::stdout().lock().flush();
    // SAFETY: plain descriptor calls on fds 1 and 2, which the process owns; the duplicate is
    // owned by the `File` from here on.
    unsafe {
        let private = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        if private < 0 {
            return Err(format!(
                "cannot duplicate stdout: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::dup2(2, 1) < 0 {
            return Err(format!(
                "cannot point stdout at stderr: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(File::from_raw_fd(private))
    }
}

#[cfg(not(unix))]
pub(crate) fn take_stdout() -> Result<File, String> {
    Err("a private stdout needs a unix platform".into())
}
