//! The source tree's layering: each module imports only from below, so the import graph has
//! no cycle — among the top-level modules of src/, and among the sibling files of each
//! module directory (e.g. `auth/jwt.rs` and `auth/jwks.rs`). Read from the `crate::` and
//! `super::` paths of the source itself, so a cycle that comes back fails here with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `(module path, source)` of every file under src/, e.g. `["auth", "jwt"]`.
fn sources() -> Vec<(Vec<String>, String)> {
    fn walk(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src")
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                let mut next = prefix.to_vec();
                next.push(name);
                walk(&p, &next, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let mut module = prefix.to_vec();
                if name != "mod" && !(prefix.is_empty() && (name == "lib" || name == "main")) {
                    module.push(name);
                }
                out.push((module, std::fs::read_to_string(&p).expect("read source")));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut out,
    );
    out
}

/// The identifiers following `prefix` in `text` (`crate::auth::jwt` → `auth`).
fn names_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &text[i + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// A cycle in `graph`, as the path that closes it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut c = stack[start..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn top_level_modules_import_only_from_below() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in sources() {
        let Some(top) = module.first() else { continue };
        for target in names_after(&text, "crate::") {
            if target != top {
                graph
                    .entry(top.clone())
                    .or_default()
                    .insert(target.to_string());
            }
        }
    }
    assert!(
        graph.contains_key("proxy") && graph.contains_key("state"),
        "the scan found no imports: {graph:?}"
    );
    if let Some(c) = cycle(&graph) {
        panic!("import cycle among src/ modules: {}", c.join(" -> "));
    }
}

#[test]
fn sibling_files_of_a_module_import_only_from_below() {
    // Edges between files of one directory: `super::x` from a child, `crate::dir::x`.
    let all = sources();
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, text) in &all {
        if module.len() < 2 {
            continue;
        }
        let (parent, me) = module.split_at(module.len() - 1);
        let siblings: BTreeSet<String> = all
            .iter()
            .filter(|(m, _)| m.len() == module.len() && m[..m.len() - 1] == *parent)
            .map(|(m, _)| m[m.len() - 1].clone())
            .collect();
        let mut targets: Vec<&str> = names_after(text, "super::");
        targets.extend(names_after(
            text,
            &format!("crate::{}::", parent.join("::")),
        ));
        for t in targets {
            if siblings.contains(t) && t != me[0] {
                graphs
                    .entry(parent.to_vec())
                    .or_default()
                    .entry(me[0].clone())
                    .or_default()
                    .insert(t.to_string());
            }
        }
    }
    for (parent, graph) in &graphs {
        if let Some(c) = cycle(graph) {
            panic!(
                "import cycle among the files of src/{}/: {}",
                parent.join("/"),
                c.join(" -> ")
            );
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
