//! The target fingerprint: a keyed 64-bit hash (SipHash-2-4) of what an operation is aimed at.
//!
//! The kernel computes it when it holds an operation, and the agent computes it when it writes a
//! grant, so that a decision applies to the destination or program that was reviewed and to
//! nothing else. Both sides call these functions; the byte order fed to the hash is part of the
//! map contract. The key is the host's secret ([`FingerprintKey`]): with an unkeyed hash a
//! workload could search offline for a second program or destination with the fingerprint of
//! one a reviewer granted, and run it under that grant.
//!
//! What is hashed starts with a byte that tells the kinds apart: a path starts with `/`, a
//! destination with its address family (2 or 10), a program's content with 0.

use crate::FingerprintKey;

/// SipHash-2-4 fed one byte at a time (written for the BPF target: no slices of unknown length,
/// every loop bounded by its caller).
struct Sip {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    /// Bytes of the word being filled, little-endian.
    word: u64,
    /// Bytes written so far.
    len: u64,
}

impl Sip {
    #[inline(always)]
    fn new(key: &FingerprintKey) -> Self {
        Sip {
            v0: key.k0 ^ 0x736f_6d65_7073_6575,
            v1: key.k1 ^ 0x646f_7261_6e64_6f6d,
            v2: key.k0 ^ 0x6c79_6765_6e65_7261,
            v3: key.k1 ^ 0x7465_6462_7974_6573,
            word: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.round();
        self.v0 ^= m;
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.word |= (b as u64) << (8 * (self.len & 7));
        self.len += 1;
        if self.len & 7 == 0 {
            let m = self.word;
            self.compress(m);
            self.word = 0;
        }
    }

    /// Eight bytes at once, where the bytes so far are a whole number of words.
    #[inline(always)]
    fn word(&mut self, m: u64) {
        self.compress(m);
        self.len += 8;
    }

    #[inline(always)]
    fn finish(mut self) -> u64 {
        let m = (self.len << 56) | self.word;
        self.compress(m);
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// Fingerprint of a network destination. `addr` is in network order, IPv4 in the first 4 bytes
/// and the rest zero; `port` in host order.
#[inline(always)]
pub fn network(key: &FingerprintKey, family: u8, proto: u8, addr: &[u8; 16], port: u16) -> u64 {
    let mut h = Sip::new(key);
    h.byte(family);
    h.byte(proto);
    let p = port.to_be_bytes();
    h.byte(p[0]);
    h.byte(p[1]);
    let mut i = 0;
    while i < 16 {
        h.byte(addr[i]);
        i += 1;
    }
    h.finish()
}

/// Fingerprint of an executable path: the first `len` bytes of `path`, whose bytes past `len`
/// must be zero (the kernel reads a path into a zeroed buffer; [`path_of`] builds one). The
/// message is the whole buffer followed by `len` (little-endian, 8 bytes), 256 bytes in all:
/// whole words, so the loop has no branch that depends on the path, and the verifier walks
/// it once (a branch a byte takes the 6.1 verifier past its limit in the exec program).
#[inline(always)]
pub fn path(key: &FingerprintKey, path: &[u8; crate::PATH_CAP], len: usize) -> u64 {
    let mut h = Sip::new(key);
    let mut w = 0;
    while w < crate::PATH_CAP / 8 {
        let b = w * 8;
        h.word(u64::from_le_bytes([
            path[b],
            path[b + 1],
            path[b + 2],
            path[b + 3],
            path[b + 4],
            path[b + 5],
            path[b + 6],
            path[b + 7],
        ]));
        w += 1;
    }
    h.word(len as u64);
    h.finish()
}

/// [`path`] of a path given as bytes (at most `PATH_CAP - 1` of them are hashed, as the kernel
/// keeps).
pub fn path_of(key: &FingerprintKey, bytes: &[u8]) -> u64 {
    let mut buf = [0u8; crate::PATH_CAP];
    let n = bytes.len().min(crate::PATH_CAP - 1);
    buf[..n].copy_from_slice(&bytes[..n]);
    path(key, &buf, n)
}

// Paths are hashed in whole words.
const _: () = assert!(crate::PATH_CAP.is_multiple_of(8));

/// Fingerprint of a program's content (its SHA-256): a held exec whose verdict came from its
/// content is reviewed, and granted, as that content, wherever it lies. The leading zero byte
/// keeps it apart from every path fingerprint (an executable path never starts with NUL).
pub fn content(key: &FingerprintKey, sha256: &[u8; 32]) -> u64 {
    let mut h = Sip::new(key);
    h.byte(0);
    for b in sha256 {
        h.byte(*b);
    }
    h.finish()
}

#[cfg(test)]
mod tests {

    use crate::PATH_CAP;

    use super::*;

    const K: FingerprintKey = FingerprintKey {
        k0: 0x0706_0504_0302_0100,
        k1: 0x0f0e_0d0c_0b0a_0908,
    };

    /// SipHash-2-4 as the standard library's (deprecated, unchanged) `SipHasher` computes it.
    #[allow(deprecated)]
    fn reference(key: &FingerprintKey, bytes: &[u8]) -> u64 {
        use core::hash::Hasher;
        let mut h = core::hash::SipHasher::new_with_keys(key.k0, key.k1);
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn the_hash_is_siphash_2_4() {
        // The first vectors of the SipHash paper's reference set (key 00..0f, message 00..n-1).
        let expected: [u64; 4] = [
            0x726f_db47_dd0e_0e31,
            0x74f8_39c5_93dc_67fd,
            0x0d6c_8009_d9a9_4f5a,
            0x8567_6696_d7fb_7e2d,
        ];
        for (n, want) in expected.iter().enumerate() {
            let mut h = Sip::new(&K);
            for i in 0..n {
                h.byte(i as u8);
            }
            assert_eq!(h.finish(), *want, "{n} bytes");
            assert_eq!(reference(&K, &[0, 1, 2][..n]), *want, "{n} bytes");
        }
        // A path: its zero-padded buffer and its length, against an independent implementation.
        let key = FingerprintKey {
            k0: 0x9e37_79b9_7f4a_7c15,
            k1: 0xbf58_476d_1ce4_e5b9,
        };
        for n in 0..PATH_CAP {
            let mut p = [0u8; PATH_CAP];
            for (i, b) in p.iter_mut().enumerate().take(n) {
                *b = (i as u8).wrapping_mul(31).wrapping_add(7);
            }
            let mut fed = [0u8; PATH_CAP + 8];
            fed[..PATH_CAP].copy_from_slice(&p);
            fed[PATH_CAP..].copy_from_slice(&(n as u64).to_le_bytes());
            assert_eq!(path(&key, &p, n), reference(&key, &fed), "{n} bytes");
            assert_eq!(path_of(&key, &p[..n]), path(&key, &p, n), "{n} bytes");
        }
        let sha = [0xabu8; 32];
        let mut fed = [0u8; 33];
        fed[1..].copy_from_slice(&sha);
        assert_eq!(content(&key, &sha), reference(&key, &fed));
        let a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut fed = [0u8; 20];
        fed[..4].copy_from_slice(&[10, 6, 0x01, 0xbb]);
        fed[4..].copy_from_slice(&a);
        assert_eq!(network(&key, 10, 6, &a, 443), reference(&key, &fed));
    }

    #[test]
    fn another_key_gives_other_fingerprints() {
        let other = FingerprintKey {
            k0: K.k0,
            k1: K.k1 ^ 1,
        };
        let mut p = [0u8; PATH_CAP];
        p[..9].copy_from_slice(b"/bin/curl");
        assert_ne!(path(&K, &p, 9), path(&other, &p, 9));
        assert_ne!(content(&K, &[1; 32]), content(&other, &[1; 32]));
        let a = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_ne!(network(&K, 2, 6, &a, 80), network(&other, 2, 6, &a, 80));
        assert!(FingerprintKey::default().is_unset());
        assert!(!other.is_unset());
    }

    #[test]
    fn a_content_is_never_taken_for_a_path_of_the_same_bytes() {
        let a = [0x2fu8; 32];
        let mut b = a;
        b[31] = 0;
        let mut as_path = [0u8; PATH_CAP];
        as_path[..32].copy_from_slice(&a);
        assert_ne!(content(&K, &a), path(&K, &as_path, 32));
        assert_ne!(content(&K, &a), content(&K, &b));
        assert_eq!(content(&K, &a), content(&K, &[0x2fu8; 32]));
    }

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
        let base = network(&K, 2, 6, &a, 443);
        assert_ne!(base, network(&K, 10, 6, &a, 443));
        assert_ne!(base, network(&K, 2, 17, &a, 443));
        assert_ne!(base, network(&K, 2, 6, &a, 444));
        let mut b = a;
        b[3] = 2;
        assert_ne!(base, network(&K, 2, 6, &b, 443));
        assert_eq!(base, network(&K, 2, 6, &a, 443));
    }

    #[test]
    fn a_path_fingerprint_covers_the_path_and_its_length() {
        let curl = path_of(&K, b"/bin/curl");
        assert_eq!(curl, path_of(&K, b"/bin/curl"));
        assert_ne!(curl, path_of(&K, b"/bin/cur"));
        assert_ne!(curl, path_of(&K, b"/bin/curl2"));
        // The same bytes with a trailing NUL are another length, another path.
        assert_ne!(curl, path_of(&K, b"/bin/curl\0"));
        let long = [b'a'; 400];
        assert_eq!(path_of(&K, &long), path_of(&K, &long[..PATH_CAP - 1]));
    }
}
