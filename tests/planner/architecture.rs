//! The layer rule of ARCHITECTURE.md, checked on the source: which module may import which, no
//! import circles in `src/`, the planner's flow files independent of each other, and no file in
//! `src/` much over 800 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file's module path (`["lifecycle", "jit"]`) and its text without comments.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    code: String,
    lines: usize,
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // Good enough for this source: no `//` inside string literals that names a module.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn modules() -> Vec<Module> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = vec![];
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(&root).expect("under src");
            let mut path: Vec<String> = rel
                .iter()
                .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if path.last().is_some_and(|l| l == "mod") {
                path.pop();
            }
            if path == ["lib"] || path == ["main"] {
                path.clear();
            }
            let text = std::fs::read_to_string(&p).expect("read file");
            out.push(Module {
                path,
                lines: text.lines().count(),
                code: strip_comments(&text),
                file: rel.to_path_buf(),
            });
        }
    }
    out
}

/// Every `crate::a::b` and `super::x` path in a module, resolved to the longest module path
/// that exists.
fn imports(m: &Module, known: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    let code = &m.code;
    let bytes = code.as_bytes();
    for (start, prefix) in code
        .match_indices("crate::")
        .map(|(i, _)| (i, "crate"))
        .chain(code.match_indices("super::").map(|(i, _)| (i, "super")))
    {
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let rest = &code[start + prefix.len() + 2..];
        let mut segs: Vec<String> = vec![];
        let mut r = rest;
        loop {
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            if end == 0 {
                break;
            }
            segs.push(r[..end].to_string());
            r = &r[end..];
            if let Some(next) = r.strip_prefix("::") {
                r = next;
            } else {
                break;
            }
        }
        // `use crate::{a, b}` and `use super::{x, y}`: one import per item.
        let groups: Vec<Vec<String>> = if segs.is_empty() && r.starts_with('{') {
            let close = r.find('}').unwrap_or(r.len());
            r[1..close]
                .split(',')
                .map(|s| {
                    s.trim()
                        .split("::")
                        .map(|x| x.trim().to_string())
                        .filter(|x| !x.is_empty())
                        .collect()
                })
                .filter(|v: &Vec<String>| !v.is_empty())
                .collect()
        } else {
            vec![segs]
        };
        for segs in groups {
            let mut full: Vec<String> = if prefix == "crate" {
                vec![]
            } else {
                let mut p = m.path.clone();
                // A `mod.rs` is its folder's module: `super` is the folder's parent.
                p.pop();
                p
            };
            let base = full.len();
            full.extend(segs);
            while full.len() > base && !known.contains(&full) {
                full.pop();
            }
            if full.len() > base || (prefix == "super" && known.contains(&full)) {
                found.insert(full);
            }
        }
    }
    found.remove(&m.path);
    // The crate root only declares the modules.
    found.remove(&Vec::new());
    found
}

/// Module path -> the module paths it imports.
type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

fn graph() -> (Vec<Module>, Graph) {
    let mods = modules();
    let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.path.clone()).collect();
    let g = mods
        .iter()
        .map(|m| (m.path.clone(), imports(m, &known)))
        .collect();
    (mods, g)
}

fn top(p: &[String]) -> String {
    p.first().cloned().unwrap_or_else(|| "crate".into())
}

/// The layers, lowest first (ARCHITECTURE.md). A module may import its own layer and the ones
/// below.
const LAYERS: &[(&str, &[&str])] = &[
    ("api", &["api", "constants", "arm_id"]),
    ("rules", &["validate", "guard", "stamp"]),
    ("lifecycle", &["lifecycle"]),
    ("executor", &["executor"]),
    (
        "doors",
        &[
            "azure",
            "controller",
            "webhook",
            "leader",
            "telemetry",
            "notify",
            "clock",
            "crashpoint",
            "azure_model",
        ],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

#[test]
fn every_module_imports_only_its_layer_and_the_ones_below() {
    let (_, g) = graph();
    let mut bad = vec![];
    for (from, tos) in &g {
        let f = top(from);
        if f == "crate" {
            continue;
        }
        let Some(lf) = layer_of(&f) else {
            bad.push(format!(
                "src/{f}: not in any layer of ARCHITECTURE.md (add it)"
            ));
            continue;
        };
        for to in tos {
            let t = top(to);
            if t == f {
                continue;
            }
            match layer_of(&t) {
                Some(lt) if lt <= lf => {}
                _ => bad.push(format!(
                    "{} imports {} ({} may not import {})",
                    from.join("::"),
                    to.join("::"),
                    LAYERS[lf].0,
                    t
                )),
            }
        }
    }
    assert!(bad.is_empty(), "forbidden imports:\n{}", bad.join("\n"));
}

#[test]
fn the_planner_imports_only_the_model_and_the_pure_rules() {
    let (_, g) = graph();
    let allowed = ["api", "constants", "arm_id", "validate", "guard", "stamp"];
    let mut bad = vec![];
    for (from, tos) in g.iter().filter(|(p, _)| top(p) == "lifecycle") {
        for to in tos {
            let t = top(to);
            if t != "lifecycle" && !allowed.contains(&t.as_str()) {
                bad.push(format!("{} imports {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the planner must stay pure:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_planner_flow_files_do_not_import_each_other() {
    let (_, g) = graph();
    let flows = ["jit", "pim", "renewal", "removal"];
    let mut bad = vec![];
    for f in flows {
        let from = vec!["lifecycle".to_string(), f.to_string()];
        for to in g.get(&from).into_iter().flatten() {
            if to.len() == 2 && to[0] == "lifecycle" && flows.contains(&to[1].as_str()) {
                bad.push(format!("lifecycle::{f} imports {}", to.join("::")));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn there_are_no_import_circles_in_src() {
    let (_, g) = graph();
    // Circles between files, and between top-level modules.
    let tops: BTreeMap<String, BTreeSet<String>> =
        g.iter().fold(BTreeMap::new(), |mut acc, (from, tos)| {
            let f = top(from);
            let e = acc.entry(f.clone()).or_default();
            for t in tos {
                if top(t) != f {
                    e.insert(top(t));
                }
            }
            acc
        });
    if let Some(cycle) = find_cycle(&tops) {
        panic!(
            "modules import each other in a circle: {}",
            cycle.join(" -> ")
        );
    }
    // Within a module: a file and its own folder's `mod.rs` are one unit (parent and child),
    // so only circles between siblings or across folders count.
    let files: BTreeMap<String, BTreeSet<String>> = g
        .iter()
        .map(|(from, tos)| {
            let f = from.join("::");
            let ts = tos
                .iter()
                .filter(|t| !from.starts_with(t) && !t.starts_with(from))
                .map(|t| t.join("::"))
                .collect();
            (f, ts)
        })
        .collect();
    if let Some(cycle) = find_cycle(&files) {
        panic!(
            "files import each other in a circle: {}",
            cycle.join(" -> ")
        );
    }
}

fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let i = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut c = stack[i..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut state, &mut vec![]) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_rule_test_sees_a_forbidden_import() {
    // The checker itself: a planner file importing the ARM client is caught.
    let known: BTreeSet<Vec<String>> = [
        vec!["lifecycle".to_string()],
        vec!["lifecycle".to_string(), "jit".to_string()],
        vec!["lifecycle".to_string(), "pim".to_string()],
        vec!["azure".to_string()],
        vec!["azure".to_string(), "client".to_string()],
    ]
    .into_iter()
    .collect();
    let m = Module {
        path: vec!["lifecycle".into(), "jit".into()],
        file: PathBuf::from("lifecycle/jit.rs"),
        code: strip_comments(
            "use crate::azure::client::ArmClient; // crate::controller\nuse super::{pim, Ctx};",
        ),
        lines: 2,
    };
    let found = imports(&m, &known);
    assert!(found.contains(&vec!["azure".to_string(), "client".to_string()]));
    assert!(found.contains(&vec!["lifecycle".to_string(), "pim".to_string()]));
    assert!(
        !found.iter().any(|p| p[0] == "controller"),
        "comments do not count"
    );
}

#[test]
fn no_file_in_src_is_much_over_800_lines() {
    let (mods, _) = graph();
    let mut big: Vec<String> = mods
        .iter()
        .filter(|m| m.lines > 850)
        .map(|m| format!("src/{} ({} lines)", m.file.display(), m.lines))
        .collect();
    big.sort();
    assert!(big.is_empty(), "split these by concern: {}", big.join(", "));
}
