//! The layering of `src/` (README.md, "Architecture"; `src/lib.rs`), checked by reading the
//! sources: an import may point only to the same or a lower layer.
//!
//! | layer | modules                          |
//! |-------|----------------------------------|
//! | 0     | time, ids, counters, rng         |
//! | 1     | protocol, journal                |
//! | 2     | session                          |
//! | 3     | apps, io                         |
//! | 4     | config                           |
//! | 5     | runtime                          |
//! | 6     | ops, sim                         |
//! | 7     | tools                            |
//! | 8     | main.rs, lib.rs (the roots)      |
//!
//! How a file is read:
//!
//! - Its layer is its top-level module under `src/` (`src/runtime/shard/tap.rs` is `runtime`).
//! - Its references are the module names after `crate::` (`use crate::io::...`, `crate::io::x()`,
//!   and each item of `use crate::{a::.., b::..}`), in code: comment lines (`//`, `//!`, `///`)
//!   and anything after `//` on a line are skipped. `super::` stays inside a module and is not
//!   checked.
//! - Unit tests may import from anywhere: the file is read up to the first `#[cfg(test)]` whose
//!   next non-blank line opens `mod tests {`, and files whose module is declared behind
//!   `#[cfg(test)]` (`src/protocol/tests/`, `src/sim/rules.rs`, ...) are skipped.
//!
//! Besides the layering, two rules hold over whole files:
//!
//! - `clap` appears only under `src/tools/` and in `src/main.rs`;
//! - `unsafe` (a block, `unsafe fn`, `unsafe impl`, `unsafe extern`, `unsafe trait`) appears only
//!   under `src/io/`, with one exception: `src/sim/alloc.rs`, the test-only counting allocator,
//!   because implementing `GlobalAlloc` is unsafe by definition.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layer of each top-level module (see the module docs).
const LAYERS: &[(&str, u8)] = &[
    ("time", 0),
    ("ids", 0),
    ("counters", 0),
    ("rng", 0),
    ("protocol", 1),
    ("journal", 1),
    ("session", 2),
    ("apps", 3),
    ("io", 3),
    ("config", 4),
    ("runtime", 5),
    ("ops", 6),
    ("sim", 6),
    ("tools", 7),
];
/// The crate roots: above every layer.
const ROOT_LAYER: u8 = 8;
/// Files outside `src/io/` allowed to contain `unsafe`, and why.
const UNSAFE_ALLOWED: &[(&str, &str)] =
    &[("sim/alloc.rs", "the test-only counting allocator: `unsafe impl GlobalAlloc`")];

#[test]
fn imports_point_down_clap_stays_in_tools_unsafe_stays_in_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = check(&src);
    assert!(
        problems.is_empty(),
        "{} architecture violation(s) (see tests/architecture.rs for the rules):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker must see what it is meant to: an upward import, a stray `clap` and a stray
/// `unsafe` in a scratch tree are each reported.
#[test]
fn the_checker_reports_each_kind_of_violation() {
    let dir = std::env::temp_dir().join(format!("fleetgate-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod session;\npub mod runtime;\n");
    write(
        "session/mod.rs",
        "//! Docs may name crate::runtime freely.\nuse crate::protocol::Header;\n\
         use crate::{time::Timestamp, runtime::Gateway};\n\
         fn f() { let _ = clap::Command::new(\"x\"); unsafe { g() } }\n\
         #[cfg(test)]\nmod tests {\n    use crate::ops::View;\n}\n",
    );
    write("runtime/mod.rs", "use crate::session::Endpoint; // crate::tools in a comment\n");
    let problems = check(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(
        has("session/mod.rs:3: `session` (layer 2) imports `runtime` (layer 5)"),
        "{problems:#?}"
    );
    assert!(has("session/mod.rs:4: `clap` outside"), "{problems:#?}");
    assert!(has("session/mod.rs:4: `unsafe` outside"), "{problems:#?}");
    assert_eq!(problems.len(), 3, "nothing else: {problems:#?}");
}

/// Every violation under `src`, one line each.
fn check(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    let test_only = test_only_files(src, &files);
    let mut problems = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(path).unwrap();
        let code: Vec<&str> = text.lines().map(code_part).collect();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let in_tools = top == "tools" || rel == "main.rs";
        for (n, line) in code.iter().enumerate() {
            if !in_tools && has_word(line, "clap") {
                problems.push(format!("{rel}:{}: `clap` outside src/tools/ and main.rs", n + 1));
            }
            if top != "io" && has_unsafe(line) && !UNSAFE_ALLOWED.iter().any(|(f, _)| *f == rel) {
                problems.push(format!("{rel}:{}: `unsafe` outside src/io/", n + 1));
            }
        }
        if test_only.contains(path) {
            continue;
        }
        let Some(layer) = layer_of_file(&rel) else {
            problems.push(format!("{rel}: `{top}` is not in the layer table"));
            continue;
        };
        let end = unit_tests_start(&code).unwrap_or(code.len());
        for (n, line) in code[..end].iter().enumerate() {
            for module in crate_refs(line) {
                match layer_of(&module) {
                    None => problems.push(format!(
                        "{rel}:{}: `crate::{module}` is not in the layer table",
                        n + 1
                    )),
                    Some(l) if l > layer => problems.push(format!(
                        "{rel}:{}: `{top}` (layer {layer}) imports `{module}` (layer {l})",
                        n + 1
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    problems
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn layer_of(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

fn layer_of_file(rel: &str) -> Option<u8> {
    if rel == "main.rs" || rel == "lib.rs" {
        return Some(ROOT_LAYER);
    }
    layer_of(rel.split('/').next()?.trim_end_matches(".rs"))
}

/// The line without its comment (`//` to the end; a whole comment line becomes empty).
fn code_part(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `word` as a whole identifier in `line`.
fn has_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// `unsafe` used as a keyword: followed by `{`, `fn`, `impl`, `extern` or `trait`.
fn has_unsafe(line: &str) -> bool {
    line.match_indices("unsafe").any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let rest = line[i + "unsafe".len()..].trim_start();
        !before.is_some_and(is_ident)
            && (rest.starts_with('{')
                || ["fn ", "impl", "extern", "trait "].iter().any(|k| rest.starts_with(k)))
    })
}

/// The top-level module names a line reaches through `crate::`.
fn crate_refs(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        if line[..i].chars().next_back().is_some_and(|c| is_ident(c) || c == '$') {
            continue; // `fleetgate_crate::`, `$crate::`
        }
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && is_ident(c) => {
                        let name: String =
                            group[j..].chars().take_while(|&c| is_ident(c)).collect();
                        out.push(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// The index of the `#[cfg(test)]` line that opens the file's `mod tests`, if any.
fn unit_tests_start(code: &[&str]) -> Option<usize> {
    (0..code.len()).find(|&i| {
        code[i].trim() == "#[cfg(test)]"
            && code[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.is_empty())
                .is_some_and(|l| l.starts_with("mod tests") && !l.ends_with(';'))
    })
}

/// Files of modules declared `#[cfg(test)] mod name;` (out of line), and everything under them.
fn test_only_files(src: &Path, files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut roots = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).unwrap();
        let code: Vec<&str> = text.lines().map(code_part).collect();
        // The folder a file's child modules live in.
        let stem = path.file_stem().unwrap().to_string_lossy();
        let dir = if stem == "mod" || stem == "lib" || stem == "main" {
            path.parent().unwrap().to_path_buf()
        } else {
            path.with_extension("")
        };
        for i in 0..code.len() {
            if code[i].trim() != "#[cfg(test)]" {
                continue;
            }
            let next = code[i + 1..].iter().map(|l| l.trim()).find(|l| !l.is_empty());
            let Some(decl) = next else { continue };
            let decl = decl.trim_start_matches("pub ").trim_start_matches("pub(crate) ");
            if let Some(name) = decl.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
                roots.push(dir.join(name));
            }
        }
    }
    files
        .iter()
        .filter(|f| {
            roots.iter().any(|r| f.starts_with(r) || **f == r.with_extension("rs"))
                && f.starts_with(src)
        })
        .cloned()
        .collect()
}
