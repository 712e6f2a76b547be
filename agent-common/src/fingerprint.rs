//! The target fingerprint: a 64-bit FNV-1a hash of what an operation is aimed at.
//!
//! The kernel computes it when it holds an operation, and the agent computes it when it writes a
//! grant, so that a decision applies to the destination or program that was reviewed and to
//! nothing else. Both sides call these functions; the byte order fed to the hash is part of the
//! map contract.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
fn mix(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(PRIME)
}

/// Fingerprint of a network destination. `addr` is in network order, IPv4 in the first 4 bytes
/// and the rest zero; `port` in host order.
#[inline(always)]
pub fn network(family: u8, proto: u8, addr: &[u8; 16], port: u16) -> u64 {
    let mut h = OFFSET;
    h = mix(h, family);
    h = mix(h, proto);
    let p = port.to_be_bytes();
    h = mix(h, p[0]);
    h = mix(h, p[1]);
    let mut i = 0;
    while i < 16 {
        h = mix(h, addr[i]);
        i += 1;
    }
    h
}

/// Fingerprint of an executable path: the first `len` bytes of `path` (at most its length).
#[inline(always)]
pub fn path(path: &[u8; crate::PATH_CAP], len: usize) -> u64 {
    let mut h = OFFSET;
    let mut i = 0;
    while i < crate::PATH_CAP {
        if i >= len {
            break;
        }
        h = mix(h, path[i]);
        i += 1;
    }
    h
}

/// Fingerprint of a program's content (its SHA-256): a held exec whose verdict came from its
/// content is reviewed, and granted, as that content, wherever it lies. The leading zero byte
/// keeps it apart from every path fingerprint (an executable path never starts with NUL).
pub fn content(sha256: &[u8; 32]) -> u64 {
    let mut h = mix(OFFSET, 0);
    for b in sha256 {
        h = mix(h, *b);
    }
    h
}

#[cfg(test)]
mod tests {

    use crate::PATH_CAP;

    #[test]
    fn a_content_is_never_taken_for_a_path_of_the_same_bytes() {
        let a = [0x2fu8; 32];
        let mut b = a;
        b[31] = 0;
        let mut as_path = [0u8; PATH_CAP];
        as_path[..32].copy_from_slice(&a);
        assert_ne!(content(&a), path(&as_path, 32));
        assert_ne!(content(&a), content(&b));
        assert_eq!(content(&a), content(&[0x2fu8; 32]));
    }
    use super::*;

    #[test]
    fn user_space_device_numbers_become_the_kernel_encoding() {
        // glibc: makedev(maj, min) = (maj & 0xfff) << 8 | (maj & !0xfff) << 32
        //                            | (min & 0xff) | (min & !0xff) << 12
        fn makedev(maj: u64, min: u64) -> u64 {
            ((maj & 0xfff) << 8) | ((maj & !0xfff) << 32) | (min & 0xff) | ((min & !0xff) << 12)
        }
        let cases = [(8, 1), (0, 0), (0, 300), (259, 65_536), (4095, 0xf_ffff)];
        for (maj, min) in cases {
            let k = crate::ExecFileKey::kernel_dev(makedev(maj, min));
            assert_eq!(
                (k >> 20, k & 0xf_ffff),
                (maj as u32, min as u32),
                "{maj}:{min}"
            );
        }
    }

    #[test]
    fn network_fingerprint_depends_on_every_field() {
        let a = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let base = network(2, 6, &a, 443);
        assert_ne!(base, network(10, 6, &a, 443));
        assert_ne!(base, network(2, 17, &a, 443));
        assert_ne!(base, network(2, 6, &a, 444));
        let mut b = a;
        b[3] = 2;
        assert_ne!(base, network(2, 6, &b, 443));
        assert_eq!(base, network(2, 6, &a, 443));
    }

    #[test]
    fn path_fingerprint_ignores_bytes_past_len() {
        let mut p = [0u8; crate::PATH_CAP];
        p[..9].copy_from_slice(b"/bin/curl");
        let h = path(&p, 9);
        p[20] = b'x';
        assert_eq!(h, path(&p, 9));
        assert_ne!(h, path(&p, 8));
    }
}
