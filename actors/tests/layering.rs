//! The crate's modules form layers (docs/architecture.md, "Layers"): each imports only from its
//! own layer or the ones below. This test reads the sources and fails on any `crate::<module>`
//! path that reaches up, naming the file, the line and the two layers, so a cycle cannot creep
//! back in unnoticed.
//!
//! Test modules (`#[cfg(test)]` to the end of a file, and files named `tests.rs`) are skipped:
//! a test may build its fixtures from anything.

use std::path::{Path, PathBuf};

/// Bottom to top. A module not listed here fails the test, so a new module gets a place.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "plain data and leaves",
        &[
            "model",
            "http_auth",
            "process",
            // lib.rs re-exports these from model/ under their short names.
            "ack",
            "chaos",
            "event",
            "events",
            "hints",
            "job",
            "json",
            "metrics",
        ],
    ),
    ("store", &["store"]),
    ("preprocess", &["preprocess"]),
    ("runners", &["runners"]),
    ("router", &["router"]),
    ("intake", &["intake"]),
    ("trigger kinds", &["triggers"]),
    (
        "registry, supervisor, ingress, service",
        &["config", "supervisor", "ingress", "service"],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `store/quarantine.rs` → `store`, `router.rs` → `router`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("file under src");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Every `crate::<name>` in a line of code (comments dropped), including inside `use crate::{a, b}`.
fn crate_paths(line: &str) -> Vec<String> {
    let code = match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if after.starts_with('{') {
            let group = &after[1..after.find('}').unwrap_or(after.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
        rest = after;
    }
    found
}

fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(src)
            .expect("under src")
            .display()
            .to_string();
        if rel == "lib.rs" || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let module = module_of(src, &file);
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "{rel}: module `{module}` has no layer in actors/tests/layering.rs"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for target in crate_paths(line) {
                if target == module {
                    continue;
                }
                match layer_of(&target) {
                    Some(layer) if layer > own => problems.push(format!(
                        "{rel}:{}: `crate::{target}` ({}) is above `{module}` ({})",
                        n + 1,
                        LAYERS[layer].0,
                        LAYERS[own].0
                    )),
                    Some(_) => {}
                    None => problems.push(format!(
                        "{rel}:{}: `crate::{target}` is not a module with a layer",
                        n + 1
                    )),
                }
            }
        }
    }
    problems
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "imports against the layers (docs/architecture.md):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("store")).expect("mkdir");
    std::fs::write(
        src.join("store/mod.rs"),
        "use crate::model::event::Event;\nuse crate::{job, triggers::TriggerConfig};\n// crate::service in a comment is fine\n#[cfg(test)]\nmod tests { use crate::service::Service; }\n",
    )
    .expect("write");
    let problems = violations(src);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("store/mod.rs:2") && problems[0].contains("crate::triggers"));
}

/// The admin API (`src/admin/` of the `millgate` crate) changes the service only through
/// `ServiceHandle`'s typed operations (docs/architecture.md, "Admin side"), never by sending
/// actor messages itself.
#[test]
fn the_admin_api_sends_no_actor_messages() {
    let admin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src/admin");
    let mut files = Vec::new();
    rust_files(&admin, &mut files);
    assert!(!files.is_empty(), "no sources under {}", admin.display());
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for raw in [
                "ractor::call",
                "ractor::cast",
                "SupervisorMsg",
                "RouterMsg",
                ".cast(",
            ] {
                if code.contains(raw) {
                    problems.push(format!("{}:{}: {raw}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "src/admin sends actor messages; add a ServiceHandle operation instead:\n  {}",
        problems.join("\n  ")
    );
}
