//! The workspace's architecture rules, checked on the source itself:
//! - no two files import each other, directly or in a circle (a file's dependencies are the
//!   `crate::`, `super::` and `self::` paths it names, resolved to the file of the module);
//! - the workspace has exactly one kernel-argument enum (`ire_core::device::KernelArg`);
//! - the device neural-network ops define no `macro_rules!`;
//! - the two device runtime crates share no run of six or more code lines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `src/` folder of the workspace's crates.
fn crate_sources() -> Vec<PathBuf> {
    let root = workspace();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap();
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| root.join(m).join("src"))
        .filter(|p| p.is_dir())
        .collect()
}

/// Source text without comments and string literals (so paths in docs do not count).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n'); lifetimes ('a) are left alone.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Removes inline `mod name { ... }` blocks (test modules): their `super::` is the file itself.
fn without_inline_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(pos) = find_inline_mod(rest) {
        out.push_str(&rest[..pos]);
        let open = pos + rest[pos..].find('{').unwrap();
        let mut depth = 0usize;
        let mut end = open;
        for (j, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn find_inline_mod(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = code[from..].find("mod ") {
        let at = from + p;
        let boundary = at == 0 || !code.as_bytes()[at - 1].is_ascii_alphanumeric();
        let tail = &code[at + 4..];
        let name_len = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(0);
        if boundary && name_len > 0 && tail[name_len..].trim_start().starts_with('{') {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// A crate's module tree: module path (segments) -> file, and file -> module path.
struct Tree {
    files: BTreeMap<Vec<String>, PathBuf>,
    /// The names each module brings into scope with `use` (local name -> path as written).
    uses: BTreeMap<Vec<String>, HashMap<String, Vec<String>>>,
}

fn module_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn child_dir(file: &Path) -> PathBuf {
    let stem = file.file_stem().unwrap().to_str().unwrap();
    let parent = file.parent().unwrap();
    if matches!(stem, "lib" | "main" | "mod") {
        parent.to_path_buf()
    } else {
        parent.join(stem)
    }
}

fn build_tree(root_file: &Path) -> Tree {
    let mut files = BTreeMap::new();
    let mut uses = BTreeMap::new();
    let mut stack = vec![(Vec::<String>::new(), root_file.to_path_buf())];
    while let Some((path, file)) = stack.pop() {
        let code = without_inline_modules(&code_only(&std::fs::read_to_string(&file).unwrap()));
        for line in code.split(';') {
            let t = line.trim();
            let decl = t
                .rsplit_once("mod ")
                .filter(|(before, _)| {
                    before.is_empty()
                        || before.ends_with(' ')
                        || before.ends_with('\n')
                        || before.ends_with(']')
                })
                .map(|(_, name)| name.trim());
            if let Some(name) = decl
                && !name.is_empty()
                && name.chars().all(|c| c.is_alphanumeric() || c == '_')
                && let Some(f) = module_file(&child_dir(&file), name)
            {
                let mut p = path.clone();
                p.push(name.to_owned());
                stack.push((p, f));
            }
        }
        let names = use_items(&code)
            .into_iter()
            .map(|(p, name)| (name, p))
            .collect();
        uses.insert(path.clone(), names);
        files.insert(path, file);
    }
    Tree { files, uses }
}

/// The `use` items of a file: (path, the name it binds), braces expanded, `as` honoured.
fn use_items(code: &str) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let t = stmt.trim();
        let Some(i) = t.find("use ") else { continue };
        let head = &t[..i];
        if !(head.is_empty()
            || head.ends_with("pub ")
            || head.ends_with(") ")
            || head.ends_with('\n')
            || head.ends_with('}')
            || head.ends_with(']'))
        {
            continue;
        }
        let body: String = t[i + 4..]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace(" as ", "@")
            .replace(' ', "");
        expand(&body, "", &mut out);
    }
    out
}

/// The paths a file names, as segment lists (`use` items and `crate::`/`super::`/`self::`
/// paths in expressions and types).
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = use_items(code).into_iter().map(|(p, _)| p).collect();
    // Paths in expressions and types: `crate::a::b`, `super::x`.
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(p) = code[from..].find(start) {
            let at = from + p;
            let boundary = at == 0
                || !(code.as_bytes()[at - 1].is_ascii_alphanumeric()
                    || code.as_bytes()[at - 1] == b'_'
                    || code.as_bytes()[at - 1] == b':'
                    || code.as_bytes()[at - 1] == b'$');
            if boundary {
                let end = code[at..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .map_or(code.len(), |e| at + e);
                let segs: Vec<String> = code[at..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                out.push(segs);
            }
            from = at + start.len();
        }
    }
    out
}

/// Paths in expressions that start with a child module of the file's module (`mlp::Mlp`).
fn child_paths(code: &str, children: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for c in children {
        let pat = format!("{c}::");
        let mut from = 0;
        while let Some(p) = code[from..].find(&pat) {
            let at = from + p;
            let prev = if at == 0 {
                b' '
            } else {
                code.as_bytes()[at - 1]
            };
            if !(prev.is_ascii_alphanumeric() || prev == b'_' || prev == b':') {
                out.push(vec!["self".to_owned(), c.clone()]);
            }
            from = at + pat.len();
        }
    }
    out
}

/// Expands `a::{b, c::{d@e}}` (`@` for ` as `) into full paths and the names they bind.
fn expand(tree: &str, prefix: &str, out: &mut Vec<(Vec<String>, String)>) {
    if let Some(open) = tree.find('{') {
        let base = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut last = 0;
        for (j, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[last..j], &base, out);
                    last = j + 1;
                }
                _ => {}
            }
        }
        expand(&inner[last..], &base, out);
    } else {
        let full = format!("{prefix}{tree}");
        let (path, alias) = match full.split_once('@') {
            Some((p, a)) => (p.to_owned(), Some(a.to_owned())),
            None => (full, None),
        };
        let mut segs: Vec<String> = path
            .split("::")
            .filter(|s| !s.is_empty() && *s != "*")
            .map(str::to_owned)
            .collect();
        if segs.last().map(String::as_str) == Some("self") {
            segs.pop();
        }
        if let Some(last) = segs.last().cloned() {
            out.push((segs, alias.unwrap_or(last)));
        }
    }
}

/// The file that defines what a path starting in module `here` names: the deepest module it
/// walks through, following the names modules bring into scope with `use` (re-exports).
fn resolve(tree: &Tree, here: &[String], path: &[String]) -> Option<PathBuf> {
    resolve_depth(tree, here, path, 0)
}

fn resolve_depth(tree: &Tree, here: &[String], path: &[String], depth: usize) -> Option<PathBuf> {
    let mut cur: Vec<String> = here.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            cur.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                cur.pop();
                rest = &rest[1..];
            }
        }
        // A relative path (`use child::Item`): from the current module.
        Some(_) => {}
        None => return None,
    }
    while let Some(s) = rest.first() {
        let mut next = cur.clone();
        next.push(s.clone());
        if tree.files.contains_key(&next) {
            cur = next;
            rest = &rest[1..];
            continue;
        }
        // A name the module imported: resolve it where it comes from (a re-export).
        if depth < 16
            && let Some(target) = tree.uses.get(&cur).and_then(|u| u.get(s))
            && target.first().is_some_and(|f| {
                matches!(f.as_str(), "crate" | "super" | "self")
                    || tree
                        .files
                        .contains_key(&[cur.clone(), vec![f.clone()]].concat())
            })
        {
            let mut full = target.clone();
            full.extend(rest[1..].iter().cloned());
            return resolve_depth(tree, &cur, &full, depth + 1);
        }
        break;
    }
    tree.files.get(&cur).cloned()
}

fn short(p: &Path) -> String {
    p.strip_prefix(workspace())
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn no_two_files_import_each_other() {
    let mut cycles = Vec::new();
    for src in crate_sources() {
        let mut roots = vec![src.join("lib.rs")];
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            roots.extend(bins.flatten().map(|e| e.path()));
        }
        for root in roots.into_iter().filter(|r| r.is_file()) {
            let tree = build_tree(&root);
            let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
            for (module, file) in &tree.files {
                let code =
                    without_inline_modules(&code_only(&std::fs::read_to_string(file).unwrap()));
                // `super` in a `mod.rs`/`lib.rs` file is relative to the module it defines.
                let children: Vec<String> = tree
                    .files
                    .keys()
                    .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
                    .map(|k| k[module.len()].clone())
                    .collect();
                let mut paths = named_paths(&code);
                paths.extend(child_paths(&code, &children));
                for path in paths {
                    if let Some(target) = resolve(&tree, module, &path)
                        && &target != file
                    {
                        edges.entry(file.clone()).or_default().insert(target);
                    }
                }
            }
            cycles.extend(strongly_connected(&edges));
        }
    }
    let report: Vec<String> = cycles
        .iter()
        .map(|c| c.iter().map(|p| short(p)).collect::<Vec<_>>().join(" <-> "))
        .collect();
    assert!(
        report.is_empty(),
        "files that import each other:\n{}",
        report.join("\n")
    );
}

/// Tarjan's strongly connected components of more than one file.
fn strongly_connected(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: HashMap<&'a PathBuf, usize>,
        low: HashMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on: BTreeSet<&'a PathBuf>,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(ws) = s.edges.get(v) {
            for w in ws {
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn exactly_one_kernel_argument_enum() {
    let mut found = Vec::new();
    for src in crate_sources() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let code = code_only(&std::fs::read_to_string(&f).unwrap());
            for line in code.lines() {
                let t = line.trim_start();
                let t = t
                    .strip_prefix("pub(crate) ")
                    .or(t.strip_prefix("pub "))
                    .unwrap_or(t);
                if let Some(rest) = t.strip_prefix("enum ") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if name == "Arg" || name.ends_with("Arg") || name.contains("KernelArg") {
                        found.push(format!("{} enum {name}", short(&f)));
                    }
                }
            }
        }
    }
    assert_eq!(
        found,
        vec!["ire-core/src/device/args.rs enum KernelArg".to_owned()],
        "kernel-argument enums"
    );
}

#[test]
fn device_nn_ops_define_no_macros() {
    let dir = workspace().join("ire-models/src/nn/device");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(!files.is_empty());
    for f in files {
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        assert!(
            !code.contains("macro_rules!"),
            "{} defines a macro",
            short(&f)
        );
    }
}

/// Code lines of a file, normalised (trimmed; blank and punctuation-only lines dropped).
fn code_lines(f: &Path) -> Vec<(usize, String)> {
    code_only(&std::fs::read_to_string(f).unwrap())
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_owned()))
        .filter(|(_, l)| l.chars().any(|c| c.is_alphanumeric()) && !l.starts_with("use "))
        .collect()
}

#[test]
fn device_runtimes_share_no_six_line_run() {
    const RUN: usize = 6;
    let root = workspace();
    let windows = |crate_dir: &str| {
        let mut files = Vec::new();
        rust_files(&root.join(crate_dir).join("src"), &mut files);
        let mut map: HashMap<Vec<String>, String> = HashMap::new();
        for f in files {
            let lines = code_lines(&f);
            for w in lines.windows(RUN) {
                let key: Vec<String> = w.iter().map(|(_, l)| l.clone()).collect();
                map.entry(key)
                    .or_insert(format!("{}:{}", short(&f), w[0].0));
            }
        }
        map
    };
    let cl = windows("ire-backend-opencl");
    let cu = windows("ire-backend-cuda");
    let shared: Vec<String> = cl
        .iter()
        .filter_map(|(k, at)| cu.get(k).map(|other| format!("{at} ~ {other}")))
        .collect();
    assert!(shared.is_empty(), "shared runs: {shared:#?}");
}
