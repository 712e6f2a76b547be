//! The mount table, for the device the kernel gives a file. The kernel identifies an executed
//! file by its inode's super block (`i_sb->s_dev`); `stat` reports another device on some file
//! systems (overlayfs gives each layer a pseudo device; btrfs a device per subvolume). The
//! super block's device is the `major:minor` of the file's mount in `/proc/self/mountinfo`, so
//! the resolver keys a rule under both.
//!
//! Owns: reading mountinfo. Must not: stat anything (the caller does).

/// One line of `/proc/self/mountinfo`, the parts used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The super block's device, kernel encoding (major << 20 | minor).
    pub dev: u32,
    /// Where it is mounted.
    pub point: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |acc, c| acc * 8 + (c - b'0') as u32);
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let (_id, _parent, dev, _root, point) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (major, minor) = dev.split_once(':')?;
            let (major, minor) = (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?);
            if major >= 1 << 12 || minor >= 1 << 20 {
                return None;
            }
            Some(Mount {
                dev: (major << 20) | minor,
                point: unescape(point),
            })
        })
        .collect()
}

/// The mount in effect for `real` (a canonical path): the longest mount point that contains
/// it, the last one listed when several are stacked there.
pub fn mount_of<'a>(mounts: &'a [Mount], real: &str) -> Option<&'a Mount> {
    let under = |point: &str| {
        point == "/"
            || real == point
            || real
                .strip_prefix(point)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| under(&m.point))
        .max_by_key(|(i, m)| (m.point.len(), *i))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /tmp rw shared:2 - tmpfs tmpfs rw
31 30 0:48 / /tmp rw shared:3 - overlay ov rw,lowerdir=/l1,upperdir=/up,workdir=/wk
40 22 259:65536 / /my\\040dir rw - ext4 /dev/nvme0n1p1 rw
41 22 x:1 / /bad rw - ext4 /dev/x rw
oops
";

    #[test]
    fn mountinfo_lines_become_mounts_and_bad_lines_are_skipped() {
        let m = parse(INFO);
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(m[3].point, "/my dir", "octal escapes undone");
        assert_eq!(m[3].dev, (259 << 20) | 65_536);
    }

    #[test]
    fn a_path_belongs_to_the_deepest_and_latest_mount() {
        let m = parse(INFO);
        let table = [
            ("/tmp/d/prog", Some(48)),
            ("/tmp", Some(48)),
            ("/tmpx/prog", Some(8 << 20 | 1)),
            ("/usr/bin/curl", Some(8 << 20 | 1)),
            ("/my dir/p", Some((259 << 20) | 65_536)),
        ];
        for (path, want) in table {
            assert_eq!(mount_of(&m, path).map(|m| m.dev), want, "{path}");
        }
        assert_eq!(mount_of(&[], "/x"), None);
    }

    #[test]
    fn odd_input_does_not_panic() {
        for s in [
            "\\",
            "\\0",
            "\\04",
            "a\\777b",
            " - ",
            "1 2 3 4 5",
            "1 2 4096:0 / /",
        ] {
            let _ = parse(s);
            let _ = unescape(s);
        }
    }
}
