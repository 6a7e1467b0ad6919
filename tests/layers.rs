//! The shim's layers (`shim/src/lib.rs`): each module imports only modules of its own layer or
//! of a lower one, and within a layer the top-level modules import each other without a cycle.
//! Read from the sources: every `crate::` / `$crate::` / `super::` path outside comments.
//!
//! Run alone: `cargo test --test layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first (the crate root, `lib.rs`, is above all of them).
const LAYERS: [&str; 6] = ["kernel", "base", "track", "epoch", "hooks", "life"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read shim/src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file: `track/pages/mod.rs` -> ["track", "pages"].
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    match last.as_str() {
        "mod.rs" | "lib.rs" => {}
        f => parts.push(f.trim_end_matches(".rs").to_string()),
    }
    parts
}

/// The code of a file with `//` comments (doc comments included) removed.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal ("http://") is rare in the shim; a byte string with
            // "//" would only hide code from this check, never invent an import.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Up to two path segments at the start of `s` (`a::b::c` -> [a, b]).
fn segments(s: &str) -> Vec<String> {
    let first = ident_at(s);
    if first.is_empty() {
        return Vec::new();
    }
    let rest = &s[first.len()..];
    let mut out = vec![first];
    if let Some(r) = rest.strip_prefix("::") {
        let second = ident_at(r);
        if !second.is_empty() {
            out.push(second);
        }
    }
    out
}

/// The absolute module paths (first two components at most) a file refers to.
fn references(module: &[String], is_mod_file: bool, text: &str) -> BTreeSet<Vec<String>> {
    let code = code(text);
    let mut out = BTreeSet::new();
    let mut push = |base: Vec<String>, rest: &str| {
        let rest = rest.trim_start();
        let mut items = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            // `crate::{a, b::c}`: the leading segments of each item.
            let end = inner.find('}').unwrap_or(inner.len());
            for item in inner[..end].split(',') {
                let seg = segments(item.trim());
                if seg.first().is_some_and(|f| f != "self") {
                    items.push(seg);
                }
            }
        } else {
            let seg = segments(rest);
            if !seg.is_empty() {
                items.push(seg);
            }
        }
        for seg in items {
            let mut p = base.clone();
            p.extend(seg);
            p.truncate(2);
            out.insert(p);
        }
    };
    for (needle, absolute) in [("$crate::", true), ("crate::", true), ("super::", false)] {
        let mut at = 0;
        while let Some(i) = code[at..].find(needle) {
            let start = at + i;
            at = start + needle.len();
            let before = code[..start].chars().last();
            if needle == "crate::" && before == Some('$') {
                continue; // counted as `$crate::`
            }
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue; // `remus_crate::`, `a::super::`
            }
            let base = if absolute {
                Vec::new()
            } else {
                // `super::` of `a/b.rs` (module a::b) is a; of `a/mod.rs` (module a) is the root.
                let mut m = module.to_vec();
                let _ = is_mod_file;
                m.pop();
                m
            };
            push(base, &code[at..]);
        }
    }
    out
}

#[test]
fn no_shim_module_imports_a_higher_layer_and_no_layer_has_a_cycle() {
    let src = remus::repo_root().join("shim/src");
    let mut all = Vec::new();
    files(&src, &mut all);
    all.sort();
    assert!(
        all.len() > 20,
        "found the shim's sources under {}",
        src.display()
    );
    let mut wrong = Vec::new();
    // Within a layer: top-level module -> top-level modules it imports.
    let mut graph: BTreeMap<(usize, String), BTreeSet<String>> = BTreeMap::new();
    let mut seen_layers = BTreeSet::new();
    for f in &all {
        let rel = f.strip_prefix(&src).expect("under shim/src");
        let module = module_of(rel);
        let text = std::fs::read_to_string(f).expect("read source");
        let Some(layer) = module.first() else {
            continue; // lib.rs: the root may import everything
        };
        let Some(r) = rank(layer) else {
            wrong.push(format!(
                "{}: module `{layer}` is in no layer ({LAYERS:?}); put it in one",
                rel.display()
            ));
            continue;
        };
        seen_layers.insert(r);
        let is_mod = rel.ends_with("mod.rs");
        for target in references(&module, is_mod, &text) {
            let Some(tl) = target.first() else { continue };
            let Some(tr) = rank(tl) else {
                wrong.push(format!(
                    "{}: refers to `crate::{}`, which is above every layer (the crate root)",
                    rel.display(),
                    target.join("::")
                ));
                continue;
            };
            if tr > r {
                wrong.push(format!(
                    "{}: layer {r} ({layer}) imports `crate::{}` of layer {tr} ({tl})",
                    rel.display(),
                    target.join("::")
                ));
            }
            if tr == r {
                if let (Some(from), Some(to)) = (module.get(1), target.get(1)) {
                    if from != to {
                        graph
                            .entry((r, from.clone()))
                            .or_default()
                            .insert(to.clone());
                    }
                }
            }
        }
    }
    assert_eq!(
        seen_layers.len(),
        LAYERS.len(),
        "every layer has sources (the check looked at the right tree)"
    );
    // Cycles among the top-level modules of one layer (depth-first search).
    fn visit(
        n: &(usize, String),
        g: &BTreeMap<(usize, String), BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<(usize, String)>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| *s == n.1) {
            let mut c = stack[i..].to_vec();
            c.push(n.1.clone());
            cycles.push(format!("{}: {}", LAYERS[n.0], c.join(" -> ")));
            return;
        }
        stack.push(n.1.clone());
        for m in g.get(n).into_iter().flatten() {
            visit(&(n.0, m.clone()), g, stack, done, cycles);
        }
        stack.pop();
        done.insert(n.clone());
    }
    let mut done = BTreeSet::new();
    let mut cycles = Vec::new();
    for n in graph.keys() {
        visit(n, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    wrong.extend(cycles.into_iter().map(|c| format!("a cycle in layer {c}")));
    assert!(
        wrong.is_empty(),
        "the shim's layers are broken:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn the_checker_sees_an_upward_import_a_grouped_one_and_super() {
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let refs = references(
        &m("track::sockets"),
        false,
        "use crate::{base::state, life};\n// crate::hooks in a comment\nuse super::pages;\nlet x = $crate::epoch::y;",
    );
    assert!(refs.contains(&m("life")), "{refs:?}");
    assert!(refs.contains(&m("base::state")), "{refs:?}");
    assert!(refs.contains(&m("track::pages")), "{refs:?}");
    assert!(refs.contains(&m("epoch::y")), "{refs:?}");
    assert!(
        !refs.contains(&m("hooks")),
        "comments are not code: {refs:?}"
    );
}
