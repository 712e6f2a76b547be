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
    /// The directory of its file system that is mounted there (`/` unless a bind mount of a
    /// directory below the root).
    pub root: String,
    /// For an overlay, its layers' directories, the upper one first: a mapping of a file of
    /// the overlay holds the file of the first layer that has it, another inode than the one
    /// `stat` and an exec see.
    pub layers: Vec<String>,
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
            let (_id, _parent, dev, root, point) =
                (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            let (major, minor) = dev.split_once(':')?;
            let (major, minor) = (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?);
            if major >= 1 << 12 || minor >= 1 << 20 {
                return None;
            }
            // Mount options and optional fields, then `-`, the file system type, the source
            // and the super block's options.
            let mut tail = f.skip_while(|x| *x != "-").skip(1);
            let (fstype, _source, options) = (tail.next(), tail.next(), tail.next());
            let layers = match (fstype, options) {
                (Some("overlay"), Some(o)) => overlay_layers(o),
                _ => Vec::new(),
            };
            Some(Mount {
                dev: (major << 20) | minor,
                point: unescape(point),
                root: unescape(root),
                layers,
            })
        })
        .collect()
}

/// An overlay's layers from its super block options (`upperdir=U,lowerdir=L1:L2`, in any
/// order, or `lowerdir+=` once per layer): U, L1, L2. The kernel escapes a comma in a path, so
/// splitting comes before undoing the escapes.
fn overlay_layers(options: &str) -> Vec<String> {
    let mut upper = None;
    let mut lower = Vec::new();
    for o in options.split(',') {
        if let Some(u) = o.strip_prefix("upperdir=") {
            upper = Some(unescape(u));
        } else if let Some(l) = o.strip_prefix("lowerdir=") {
            lower.extend(l.split(':').filter(|d| !d.is_empty()).map(unescape));
        } else if let Some(l) = o.strip_prefix("lowerdir+=") {
            lower.push(unescape(l));
        }
    }
    upper.into_iter().chain(lower).collect()
}

/// The path of `real` in each of `m`'s layers, in the overlay's order (the first that exists
/// is the one a mapping holds); empty where `m` is no overlay or `real` is not below it.
pub fn in_layers(m: &Mount, real: &str) -> Vec<String> {
    let rest = if m.point == "/" {
        Some(real)
    } else {
        real.strip_prefix(m.point.as_str())
            .filter(|r| r.starts_with('/'))
    };
    let Some(rest) = rest else {
        return Vec::new();
    };
    // A bind mount of a directory of the overlay shows that directory at its mount point.
    let root = m.root.trim_end_matches('/');
    m.layers
        .iter()
        .filter(|l| l.starts_with('/'))
        .map(|l| format!("{}{root}{rest}", l.trim_end_matches('/')))
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
        let layers: Vec<usize> = m.iter().map(|m| m.layers.len()).collect();
        assert_eq!(layers, [0, 0, 2, 0], "only the overlay has layers");
        assert_eq!(m[2].layers, ["/up", "/l1"]);
    }

    #[test]
    fn a_file_of_an_overlay_is_found_in_its_layers_in_order() {
        let info = "\
31 30 0:48 / /merged rw - overlay ov rw,lowerdir=/l\\0541:/l2,upperdir=/up,workdir=/wk
32 30 0:49 / / rw - overlay ov rw,upperdir=/u,lowerdir+=/a,lowerdir+=/b
33 30 0:50 / /ro rw - overlay ov ro,lowerdir=/only
34 30 0:48 /sub/dir /bound rw - overlay ov rw,lowerdir=/l2,upperdir=/up,workdir=/wk
";
        let m = parse(info);
        // (mount, path, paths in the layers)
        let table: [(usize, &str, &[&str]); 7] = [
            (
                0,
                "/merged/bin/p",
                &["/up/bin/p", "/l,1/bin/p", "/l2/bin/p"],
            ),
            (0, "/merged", &[]),
            (0, "/mergedx/p", &[]),
            (
                1,
                "/usr/bin/p",
                &["/u/usr/bin/p", "/a/usr/bin/p", "/b/usr/bin/p"],
            ),
            (2, "/ro/p", &["/only/p"]),
            (2, "/elsewhere/p", &[]),
            (3, "/bound/p", &["/up/sub/dir/p", "/l2/sub/dir/p"]),
        ];
        for (i, path, want) in table {
            assert_eq!(in_layers(&m[i], path), want, "{path}");
        }
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
