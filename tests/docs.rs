//! The README's configuration examples must load: docs that drift from the code are bugs.

#[test]
fn readme_toml_examples_are_valid_configurations() {
    let readme = include_str!("../README.md");
    let mut blocks = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed code block");
        blocks.push(&body[..end]);
        rest = &body[end..];
    }
    assert!(!blocks.is_empty(), "README has no toml example");
    for block in blocks {
        millgate::load_str(block, "README.md", |k| Some(format!("dummy-{k}")))
            .unwrap_or_else(|e| panic!("README example does not load:\n{e}\n---\n{block}"));
    }
}

#[test]
fn default_config_defines_a_webhook_a_route_and_their_runnable() {
    let c = millgate::load_str(millgate::DEFAULT_CONFIG, "config.toml", |_| None).unwrap();
    let kinds: Vec<&str> = c.triggers.iter().map(|t| t.common.kind.as_str()).collect();
    assert!(
        kinds.contains(&"webhook") && kinds.contains(&"http"),
        "{kinds:?}"
    );
    for t in &c.triggers {
        assert!(c.runnables.contains_key(&t.common.runnable));
    }
}
