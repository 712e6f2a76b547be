//! The arguments of an exec held after its new image is in place, for rules with `args`.
//!
//! The process is stopped before its first instruction and has a single thread (an exec ends
//! the others), so the argument area of its new memory is what the program will read: nothing
//! of the workload runs to change it before the verdict.

use std::io::Read;

/// Most bytes of arguments read. A longer command line is decided as if every rule with
/// `args` matched: words past the limit could be the ones a rule names.
pub const MAX_ARGV_BYTES: usize = 256 * 1024;

/// Why the arguments of a held exec are not known.
#[derive(Debug, thiserror::Error)]
pub enum ArgvError {
    /// `/proc/PID/cmdline` could not be read (the process is gone).
    #[error("cannot read /proc/{pid}/cmdline: {source}")]
    Read {
        /// The process.
        pid: u32,
        /// The error.
        source: std::io::Error,
    },
    /// The command line is longer than [`MAX_ARGV_BYTES`].
    #[error("the arguments of process {pid} are longer than {MAX_ARGV_BYTES} bytes")]
    TooLong {
        /// The process.
        pid: u32,
    },
}

/// `argv[1..]` of process `pid`.
pub fn read(pid: u32) -> Result<Vec<Vec<u8>>, ArgvError> {
    let path = format!("/proc/{pid}/cmdline");
    let f = std::fs::File::open(&path).map_err(|source| ArgvError::Read { pid, source })?;
    let mut raw = Vec::new();
    f.take(MAX_ARGV_BYTES as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|source| ArgvError::Read { pid, source })?;
    if raw.len() > MAX_ARGV_BYTES {
        return Err(ArgvError::TooLong { pid });
    }
    Ok(split(&raw))
}

/// The words of a NUL-separated command line, without `argv[0]`. An empty argument is a word
/// too (`kubectl "" delete` has three).
pub fn split(raw: &[u8]) -> Vec<Vec<u8>> {
    let body = raw.strip_suffix(b"\0").unwrap_or(raw);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0)
        .skip(1)
        .map(<[u8]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_into_words_after_argv0() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"kubectl\0delete\0pod\0x\0", &[b"delete", b"pod", b"x"]),
            (b"kubectl\0", &[]),
            (b"", &[]),
            (b"kubectl\0\0delete\0", &[b"", b"delete"]),
            // No final NUL (a process that rewrote its arguments): the last word is kept.
            (b"aws\0s3\0cp", &[b"s3", b"cp"]),
            (b"x\0dele\xfft\0", &[b"dele\xfft"]),
        ];
        for &(raw, want) in cases {
            let got = split(raw);
            let want: Vec<Vec<u8>> = want.iter().map(|w| w.to_vec()).collect();
            assert_eq!(got, want, "{raw:?}");
        }
    }

    #[test]
    fn this_process_arguments_are_read_and_a_missing_process_is_an_error() {
        let me = read(std::process::id()).expect("own cmdline");
        let want: Vec<Vec<u8>> = std::env::args_os()
            .skip(1)
            .map(|a| a.into_encoded_bytes())
            .collect();
        assert_eq!(me, want);
        let e = read(u32::MAX).expect_err("no such process");
        assert!(e.to_string().contains("/proc/4294967295/cmdline"), "{e}");
    }
}
