//! The docs stay true: the CLI reference is what clap says today, and every relative link
//! in the README and docs/ points at a file that exists.
//!
//! After changing a flag or a subcommand: `REGCRED_UPDATE_DOCS=1 cargo test --test docs`.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// docs/cli.md as clap-markdown renders `regcred::cli::Cli`.
fn cli_reference() -> String {
    let body = clap_markdown::help_markdown_command(&regcred::cli::Cli::command());
    format!(
        "<!-- Generated from the clap definitions by tests/docs.rs; do not edit. Regenerate:\n     \
         REGCRED_UPDATE_DOCS=1 cargo test --test docs -->\n\n{body}"
    )
}

#[test]
fn the_cli_reference_is_current() {
    let path = root().join("docs/cli.md");
    let want = cli_reference();
    if std::env::var_os("REGCRED_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/cli.md is out of step with the CLI; run: REGCRED_UPDATE_DOCS=1 cargo test --test docs"
    );
    // It covers every mode and the shared configuration flags.
    for needle in [
        "## `regcred run`",
        "## `regcred sync`",
        "## `regcred credential-provider`",
        "## `regcred render`",
        "## `regcred check`",
        "## `regcred cleanup`",
        "`--config <FILE>`",
        "`--lease-name <NAME>`",
    ] {
        assert!(
            want.contains(needle),
            "{needle} missing from the CLI reference"
        );
    }
}

/// `[text](target)` links in a Markdown text whose target is a relative path.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or_default();
        let external = target.contains("://") || target.starts_with("mailto:");
        if !target.is_empty() && !external && !target.contains(' ') {
            links.push(target.to_owned());
        }
        rest = &rest[end..];
    }
    links
}

#[test]
fn relative_links_in_the_readme_and_docs_resolve() {
    let mut files = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let dir = file.parent().unwrap_or(Path::new("."));
        for link in relative_links(&text) {
            // ../shared/SPEC.md lives beside the repository, not in it.
            if link.starts_with("../shared/") || link.starts_with("../../shared/") {
                continue;
            }
            assert!(
                dir.join(&link).exists(),
                "{}: link to {link} does not resolve",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} links found; is the parser broken?"
    );
}

#[test]
fn relative_links_finds_links() {
    assert_eq!(
        relative_links("see [a](docs/a.md#x), [b](https://x.y/z) and [c](../c.md)"),
        ["docs/a.md", "../c.md"]
    );
}
