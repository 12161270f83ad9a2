//! The house's layout, checked: data flows one way, and the imports must say so.
//!
//! Reads the non-test code of every file under `src/` (each file up to its first
//! `#[cfg(test)]`, comments left out) and fails on
//! - an import against the flow: sources -> pipeline -> sink, `ops` and the hot-standby pair
//!   (`ha`) beside them (named by the agent's assembly alone), the simulator beside them too,
//!   and the ground under all
//!   (envelope, acknowledgements, configuration, telemetry, the ESL format, the HTTP server,
//!   the shutdown and state types, dates);
//! - a non-test file over [`MAX_LINES`] lines.
//!
//! What is not so yet is listed below, exactly: a debt that only shrinks. A new import against
//! the flow or a new long file fails, and so does an entry here that is no longer true (so the
//! list is kept exact as the debt is paid).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Longest a file's non-test code may be.
const MAX_LINES: usize = 700;

/// The ground under every wing: it imports only itself.
const GROUND: &[&str] = &["ack", "civil", "config", "envelope", "esl", "http", "shutdown", "state", "telemetry"];

/// What each wing may import beyond the ground. `app`, `main` and `lib` assemble the agent and
/// may name anything.
const WINGS: &[(&str, &[&str])] = &[
    ("source", &["pipeline"]),
    ("pipeline", &[]),
    ("sink", &["pipeline"]),
    ("ops", &["source", "pipeline", "sink", "ha"]),
    // The hot-standby pair stands beside the flow: the reader hands it events through
    // `source::Gate`, the writers read its fence through `sink::writer::WriteFence`.
    ("ha", &["source", "pipeline", "sink"]),
];

/// Imports against the flow that are still there: `(file, wing it names)`.
const KNOWN_IMPORTS: &[(&str, &str)] = &[];

/// Files still over [`MAX_LINES`]: `(file, its non-test lines at most)`.
const KNOWN_LONG: &[(&str, usize)] = &[];

/// The first path segment under `src/`: the wing or ground module a file belongs to.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("a file").as_os_str().to_string_lossy().into_owned();
    first.strip_suffix(".rs").map(str::to_owned).unwrap_or(first)
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code before its first `#[cfg(test)]`, with `//` comments (doc comments too) left
/// out.
fn non_test_code(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .map(|l| match l.find("//") {
            // Not inside a string on this line: an even number of quotes before it.
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect()
}

/// Every `crate::<module>` a piece of code names.
fn named_modules(code: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code {
        let mut rest = *line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn allowed(from: &str, to: &str) -> bool {
    if from == to || GROUND.contains(&to) || matches!(from, "app" | "main" | "lib") {
        return true;
    }
    if GROUND.contains(&from) {
        return false;
    }
    WINGS.iter().find(|(w, _)| *w == from).is_some_and(|(_, may)| may.contains(&to))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).expect("in the crate").to_string_lossy().replace('\\', "/")
}

#[test]
fn imports_follow_the_flow_and_files_stay_short() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut against: BTreeSet<(String, String)> = BTreeSet::new();
    let mut long: Vec<(String, usize)> = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read a source file");
        let code = non_test_code(&text);
        let from = module_of(path);
        let known_module = GROUND.contains(&from.as_str())
            || WINGS.iter().any(|(w, _)| *w == from)
            || matches!(from.as_str(), "app" | "main" | "lib");
        assert!(
            known_module,
            "{}: `{from}` is neither a wing nor the ground: place it in tests/layout.rs",
            relative(path)
        );
        for to in named_modules(&code) {
            if !allowed(&from, &to) {
                against.insert((relative(path), to));
            }
        }
        if code.len() > MAX_LINES {
            long.push((relative(path), code.len()));
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN_IMPORTS.iter().map(|(f, m)| (f.to_string(), m.to_string())).collect();
    let new: Vec<_> = against.difference(&known).collect();
    let paid: Vec<_> = known.difference(&against).collect();
    assert!(new.is_empty(), "imports against the flow (file, module it names): {new:?}");
    assert!(paid.is_empty(), "no longer true, take them out of KNOWN_IMPORTS: {paid:?}");
    for (file, lines) in &long {
        match KNOWN_LONG.iter().find(|(f, _)| f == file) {
            Some((_, cap)) => assert!(lines <= cap, "{file}: {lines} lines of non-test code, more than its {cap}"),
            None => panic!("{file}: {lines} lines of non-test code, over {MAX_LINES}: split it by concern"),
        }
    }
    for (file, _) in KNOWN_LONG {
        assert!(
            long.iter().any(|(f, _)| f == file),
            "{file} is no longer over {MAX_LINES} lines: take it out of KNOWN_LONG"
        );
    }
}

/// The fake switch is a crate of its own (`simulate/`): it may use the agent's ground (the ESL
/// encoder, the clock, dates, signals) and nothing of its wings, and its files stay short too.
#[test]
fn the_simulator_uses_the_ground_alone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("simulate").join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 5, "the simulator's sources are in simulate/src");
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read a source file");
        let code = non_test_code(&text);
        let code: Vec<String> = code.iter().map(|l| l.replace("eslstream::", "crate::")).collect();
        let code: Vec<&str> = code.iter().map(String::as_str).collect();
        let own: BTreeSet<String> = files
            .iter()
            .filter_map(|f| f.strip_prefix(&root).ok()?.components().next())
            .map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        for name in named_modules(&code) {
            assert!(
                own.contains(&name) || GROUND.contains(&name.as_str()),
                "{}: names the agent's `{name}`, which is not ground",
                path.display()
            );
        }
        assert!(code.len() <= MAX_LINES, "{}: {} lines of non-test code, over {MAX_LINES}", path.display(), code.len());
    }
}

#[test]
fn the_check_sees_what_it_checks() {
    let code = non_test_code(
        "use crate::ops::x; // crate::sink in a comment\n/// crate::pipeline in a doc\nlet s = \"//\"; crate::source::y\n#[cfg(test)]\nuse crate::app;",
    );
    assert_eq!(named_modules(&code), BTreeSet::from(["ops".to_string(), "source".to_string()]));
    assert!(allowed("sink", "pipeline") && allowed("sink", "telemetry") && !allowed("sink", "ops"));
    assert!(!allowed("pipeline", "sink") && !allowed("envelope", "pipeline") && allowed("app", "ops"));
}
