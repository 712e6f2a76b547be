//! Central's modules import each other in one direction: storage and pure code at the bottom,
//! the engine's state and its domain modules above them, the channels (gRPC, console, chat)
//! above those, and the wiring (`server`) on top. Read from the source itself, so that a `use`
//! that runs the wrong way fails here, naming the module and what it imports.
//!
//! An import is a `crate::` or `super::` path in a file's code (comments and `#[cfg(test)]`
//! modules left out), resolved to the longest module it names. A module that declares
//! submodules and uses their items is not counted as importing them: they are its parts.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Modules by name (`web::login`), with their files.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("below src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            // The crate root and the binary hold no module of their own.
            if name == "lib" || name == "main" {
                continue;
            }
            out.insert(name, path);
        }
    }
    out
}

/// The file's code: no comments, no test module (a `#[cfg(test)]` before a `mod`; any other
/// test-only item is read, which can only find more imports).
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        let line = match line.find("//") {
            // A `//` inside a string (a URL) is not a comment: keep lines with a quote before it.
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every path a use tree (or a path in code) at the start of `rest` names, each a list of
/// segments. Reads up to the end of the statement; every step consumes input, so a form it does
/// not know (`*`, `r#name`, `as`) ends a path rather than the parse.
fn use_paths(rest: &str) -> Vec<Vec<String>> {
    fn skip_space(b: &[u8], i: &mut usize) {
        while *i < b.len() && (b[*i].is_ascii_whitespace() || b[*i] == b',') {
            *i += 1;
        }
    }
    fn tree(b: &[u8], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        skip_space(b, i);
        if *i < b.len() && b[*i] == b'{' {
            *i += 1;
            loop {
                skip_space(b, i);
                if *i >= b.len() {
                    return;
                }
                if b[*i] == b'}' {
                    *i += 1;
                    return;
                }
                let before = *i;
                tree(b, i, prefix.clone(), out);
                if *i == before {
                    // Nothing this parser reads (`*`, `#`): step over it.
                    *i += 1;
                }
            }
        }
        if b[*i..].starts_with(b"r#") {
            *i += 2;
        }
        let start = *i;
        while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b[*i] == b'_') {
            *i += 1;
        }
        let mut path = prefix;
        if *i > start {
            path.push(String::from_utf8_lossy(&b[start..*i]).into_owned());
        }
        if b[*i..].starts_with(b"::") {
            *i += 2;
            tree(b, i, path, out);
        } else {
            // `as name`, generics, a call: the path ends here; skip to the next entry.
            while *i < b.len() && !matches!(b[*i], b',' | b'}') {
                *i += 1;
            }
            if !path.is_empty() {
                out.push(path);
            }
        }
    }
    // One statement is all that is read (a path in code ends at its first other character).
    let end = rest.find(';').unwrap_or(rest.len());
    let mut out = Vec::new();
    let mut i = 0;
    tree(&rest.as_bytes()[..end], &mut i, Vec::new(), &mut out);
    out
}

/// Names the crate root re-exports (`pub use server::{start, Server}` in `lib.rs`), by module.
fn root_exports(src: &Path) -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("central/src/lib.rs");
    let mut out = BTreeMap::new();
    for stmt in code(&lib).split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        for path in use_paths(rest) {
            if let (Some(module), Some(name)) = (path.first(), path.last()) {
                out.insert(name.clone(), module.clone());
            }
        }
    }
    out
}

/// The modules `name`'s file imports; `exports` maps the crate root's re-exported names to
/// their modules, so that `crate::Central` counts as an import of `engine`.
fn imports(
    name: &str,
    text: &str,
    all: &BTreeMap<String, PathBuf>,
    exports: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let code = code(text);
    let parent: Vec<&str> = name.split("::").collect();
    let parent = &parent[..parent.len() - 1];
    let mut found = BTreeSet::new();
    for (anchor, base) in [("crate::", Vec::new()), ("super::", parent.to_vec())] {
        let mut from = 0;
        while let Some(i) = code[from..].find(anchor) {
            let at = from + i;
            from = at + anchor.len();
            // `latch_central::x` or `my_super::` are not this anchor.
            if code[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            for path in use_paths(&code[from..]) {
                let mut full: Vec<String> = base.iter().map(|s| s.to_string()).collect();
                full.extend(path);
                if anchor == "crate::" && full.len() == 1 {
                    if let Some(module) = exports.get(&full[0]) {
                        full.insert(0, module.clone());
                    }
                }
                // The longest prefix that is a module.
                for n in (1..=full.len()).rev() {
                    let candidate = full[..n].join("::");
                    if all.contains_key(&candidate) {
                        if candidate != name && !candidate.starts_with(&format!("{name}::")) {
                            found.insert(candidate);
                        }
                        break;
                    }
                }
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = modules(&src);
    assert!(
        all.contains_key("engine") && all.contains_key("store"),
        "central's modules not found in {}: {:?}",
        src.display(),
        all.keys().collect::<Vec<_>>()
    );
    let exports = root_exports(&src);
    all.iter()
        .map(|(name, path)| {
            let text =
                std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name.clone(), imports(name, &text, &all, &exports))
        })
        .collect()
}

/// A module's layer: 0 ground (pure, or storage), 1 the engine and its domain, 2 the channels,
/// 3 the wiring. `None`: not placed yet, which fails the test below.
fn layer(module: &str) -> Option<u8> {
    let top = module.split("::").next().unwrap_or(module);
    match top {
        "clock" | "text" | "tally" | "review" | "merge" | "auto_protocol" | "breaker"
        | "delivered" | "metrics" | "role" | "chain" | "report" | "store" | "config" => Some(0),
        "error" | "events" | "auth" | "tls" | "oidc" | "validate" | "engine" | "dispatch"
        | "auto" | "approval" | "break_glass" | "grants" | "hosts" | "identity" | "rules"
        | "audit" | "known_names" => Some(1),
        "api" | "web" | "notify" | "autoreview" => Some(2),
        "server" => Some(3),
        _ => None,
    }
}

/// Strongly connected groups of more than one module.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one cycle when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for n in g.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in g.keys() {
        if done.contains(m) {
            continue;
        }
        let group: Vec<String> = g
            .keys()
            .filter(|n| *n == m || (reached[m].contains(*n) && reached[*n].contains(m)))
            .cloned()
            .collect();
        done.extend(group.iter().cloned());
        if group.len() > 1 {
            out.push(group);
        }
    }
    out
}

#[test]
fn no_two_modules_of_central_import_each_other() {
    let g = graph();
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "modules that import each other, directly or around a loop: {found:?}"
    );
}

#[test]
fn no_two_top_level_modules_import_each_other_through_their_parts() {
    // `engine` holds the caches the domain modules use: were they parts of those modules
    // (`identity::log`), the files would be acyclic while `engine` and `identity` used each other.
    let g = graph();
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, imported) in &g {
        let entry = modules.entry(top(m)).or_default();
        entry.extend(imported.iter().map(|i| top(i)).filter(|i| *i != top(m)));
    }
    let found = cycles(&modules);
    assert!(
        found.is_empty(),
        "top-level modules that import each other: {found:?}"
    );
}

#[test]
fn central_s_modules_import_only_their_own_layer_or_below() {
    let g = graph();
    let mut wrong = Vec::new();
    for (module, imported) in &g {
        let Some(l) = layer(module) else {
            wrong.push(format!(
                "{module} has no layer: place it in this test's table"
            ));
            continue;
        };
        for i in imported {
            if layer(i).is_some_and(|li| li > l) {
                wrong.push(format!(
                    "{module} (layer {l}) imports {i} (layer {})",
                    layer(i).unwrap_or(0)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The table names real modules, so that a renamed one is not silently unchecked.
    for m in [
        "engine", "store", "api", "web", "notify", "server", "approval", "tally",
    ] {
        assert!(g.contains_key(m), "{m} is not a module of central any more");
    }
}

#[test]
fn channels_do_not_lean_on_each_other() {
    // What the console and Slack share with the gRPC services (the checks of a decision, of an
    // audit query) lives in the engine's layer, so no channel imports another.
    let g = graph();
    let channel = |m: &str| {
        matches!(
            m.split("::").next(),
            Some("api" | "web" | "notify" | "autoreview")
        )
    };
    let mut wrong = Vec::new();
    for (module, imported) in &g {
        let top = module.split("::").next().unwrap_or_default();
        for i in imported {
            if channel(module) && channel(i) && i.split("::").next() != Some(top) {
                wrong.push(format!("{module} imports {i}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn only_the_store_speaks_sql() {
    // Every table, its statements and the driver are the store's (`store::requests`,
    // `store::hosts`, `store::console`, ...); the domain modules and the channels ask it in
    // their own terms.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut speaking = Vec::new();
    for (name, path) in modules(&src) {
        if name.split("::").next() == Some("store") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if code(&text).contains("sqlx") {
            speaking.push(name);
        }
    }
    assert!(
        speaking.is_empty(),
        "modules outside the store that use sqlx: {speaking:?}"
    );
}

#[test]
fn the_pure_modules_touch_no_storage() {
    // The tally and the audit chain's encoding are used offline by latchctl and by every channel.
    let g = graph();
    for m in [
        "tally", "review", "merge", "chain", "text", "clock", "role", "report",
    ] {
        let imported = &g[m];
        assert!(
            !imported
                .iter()
                .any(|i| i == "store" || i.starts_with("store::")),
            "{m} imports the store: {imported:?}"
        );
    }
}

#[test]
fn use_trees_and_comments_are_read_as_imports_are() {
    let all: BTreeMap<String, PathBuf> = [
        "a", "b", "b::c", "d", "e", "f", "g", "h", "k", "x", "x::y", "z",
    ]
    .into_iter()
    .map(|m| (m.to_string(), PathBuf::new()))
    .collect();
    let text = "use crate::{a::Thing, b::{c::Other, self}};\n\
                // use crate::d;\n\
                fn f() { crate::e::call(); let u = \"http://x\"; }\n\
                use super::y::Z;\n\
                use crate::{f::*, r#g::H as I};\n\
                use crate::k::{\n    L,\n    M,\n};\n\
                use crate::Root;\n\
                #[cfg(test)]\nfn helper() { crate::h::x(); }\n\
                #[cfg(test)]\nmod tests { use crate::d; }\n";
    let exports = BTreeMap::from([("Root".to_string(), "z".to_string())]);
    let got = imports("x::w", text, &all, &exports);
    let want: BTreeSet<String> = ["a", "b", "b::c", "e", "f", "g", "h", "k", "x::y", "z"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
    // A loop through three modules is one cycle; a chain is none.
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("p", vec!["q"]),
        ("q", vec!["r"]),
        ("r", vec!["p"]),
        ("s", vec!["p"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        cycles(&g),
        vec![vec!["p".to_string(), "q".into(), "r".into()]]
    );
}
