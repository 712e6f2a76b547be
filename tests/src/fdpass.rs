//! Passing a descriptor over a UNIX socket (`SCM_RIGHTS`), as the integrity tests and the probe
//! both do: one place that builds the control message.

use std::os::fd::{AsRawFd, RawFd};

/// Sends `fd` over `stream` as one `SCM_RIGHTS` control message with a one-byte body; the
/// kernel's refusal (an io_uring ring, say) is the error.
pub fn send_fd(stream: &impl AsRawFd, fd: RawFd) -> std::io::Result<()> {
    let mut byte = [b'x'];
    let mut control = [0u64; 8];
    // SAFETY: `sendmsg` from local buffers; the control message is written through the libc
    // macros, inside `control`, which is large and aligned enough for one descriptor.
    let sent = unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut i32, fd);
        libc::sendmsg(stream.as_raw_fd(), &msg, 0)
    };
    match sent {
        1 => Ok(()),
        n if n < 0 => Err(std::io::Error::last_os_error()),
        n => Err(std::io::Error::other(format!(
            "sendmsg sent {n} bytes of 1"
        ))),
    }
}
