//! regcred's container image, made as the Dockerfile makes it but without a container
//! engine: the Dockerfile's build stage (its COPY lines, ENV and RUN, read from the file
//! itself) run here, and the final stage's files assembled by `scripts/oci-image.sh`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{stack, stderr, stdout};

/// One instruction of a Dockerfile: keyword and arguments (continuations joined).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((keyword.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// What the build stage does.
#[derive(Debug, Default)]
struct BuildStage {
    rust_version: String,
    workdir: String,
    copies: Vec<(Vec<String>, String)>,
    env: BTreeMap<String, String>,
    run: String,
    output: String,
}

fn build_stage(dockerfile: &str) -> BuildStage {
    let mut stage = BuildStage::default();
    let mut in_build = false;
    for (keyword, args) in instructions(dockerfile) {
        match keyword.as_str() {
            "ARG" if !in_build => {
                if let Some(v) = args.strip_prefix("RUST_VERSION=") {
                    v.clone_into(&mut stage.rust_version);
                }
            }
            "FROM" => in_build = args.ends_with(" AS build"),
            "WORKDIR" if in_build => stage.workdir = args,
            "COPY" if in_build => {
                let mut parts: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
                let dest = parts.pop().unwrap();
                stage.copies.push((parts, dest));
            }
            "ENV" if in_build => {
                let (k, v) = args.split_once('=').expect("ENV K=V");
                stage
                    .env
                    .insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
            "RUN" if in_build => {
                assert!(stage.run.is_empty(), "the build stage has one RUN");
                let words: Vec<&str> = args
                    .split_whitespace()
                    .skip_while(|w| w.starts_with("--"))
                    .collect();
                stage.run = words.join(" ");
            }
            "COPY" | "ENTRYPOINT" | "USER" | "EXPOSE" | "CMD" | "ARG" => {
                if keyword == "COPY" && args.starts_with("--from=build ") {
                    let mut parts = args.split_whitespace().skip(1);
                    stage.output = parts.next().unwrap().to_owned();
                }
            }
            other => panic!("unexpected instruction {other} {args}"),
        }
    }
    stage
}

/// Copies `from` to `to`, writing only files whose bytes differ (so cargo sees unchanged
/// sources as unchanged) and removing files `from` no longer has.
fn mirror(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        let mut keep = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            keep.insert(entry.file_name());
            mirror(&entry.path(), &to.join(entry.file_name()));
        }
        for entry in std::fs::read_dir(to).unwrap() {
            let entry = entry.unwrap();
            if !keep.contains(&entry.file_name()) {
                let path = entry.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(path).unwrap();
                } else {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
    } else {
        let bytes = std::fs::read(from).unwrap();
        if std::fs::read(to).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(to, bytes).unwrap();
        }
    }
}

/// Runs the Dockerfile's build stage here; the binary it makes (in a temp dir).
pub fn build_as_the_dockerfile_does() -> (tempfile::TempDir, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let stage = build_stage(&std::fs::read_to_string(root.join("Dockerfile")).unwrap());

    // The image's toolchain is the one the repository pins.
    let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
    assert!(
        toolchain.contains(&format!("channel = \"{}\"", stage.rust_version)),
        "Dockerfile RUST_VERSION {} is not rust-toolchain.toml's channel",
        stage.rust_version
    );

    // The build context as the Dockerfile's COPY lines lay it out in WORKDIR, and nothing
    // else; target/ is the repository's own (the first build is slow, later ones are not).
    let workdir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dockerfile-build");
    std::fs::create_dir_all(&workdir).unwrap();
    for (sources, dest) in &stage.copies {
        let dest = dest.strip_prefix("./").unwrap_or(dest);
        for source in sources {
            let target = if dest.ends_with('/') || dest.is_empty() {
                workdir
                    .join(dest)
                    .join(Path::new(source).file_name().unwrap())
            } else {
                workdir.join(dest)
            };
            mirror(&root.join(source), &target);
        }
    }
    let link = workdir.join("target");
    if !link.exists() {
        std::os::unix::fs::symlink(root.join("target"), &link).unwrap();
    }
    let out_dir = tempfile::tempdir().unwrap();
    let output = stage.output.replacen("/out/", "", 1);
    assert_ne!(output, stage.output, "the build RUN installs into /out/");
    let run = stage
        .run
        .replace(" /out/", &format!(" {}/", out_dir.path().display()));
    let mut cmd = Command::new("sh");
    cmd.args(["-ec", &run]).current_dir(&workdir);
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(&stage.env);
    let built = cmd.output().expect("run the Dockerfile's build");
    assert!(
        built.status.success(),
        "{run}\n{}\n{}",
        stdout(&built),
        stderr(&built)
    );
    let binary = out_dir.path().join(&output);
    (out_dir, binary)
}

/// The image's name on the stack's node.
pub const NODE_IMAGE: &str = concat!("regcred.test/regcred:", env!("CARGO_PKG_VERSION"));

/// regcred's image, built once per test process and imported into the node's containerd
/// (as a node that pulled it would hold it); its name, for `imagePullPolicy: IfNotPresent`.
pub fn on_the_node() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let (_dir, binary) = build_as_the_dockerfile_does();
        let out_dir = tempfile::tempdir().unwrap();
        let layout = out_dir.path().join("regcred");
        let made = Command::new(stack().root.join("scripts/oci-image.sh"))
            .arg(&binary)
            .arg(&layout)
            .arg(NODE_IMAGE)
            .output()
            .unwrap();
        assert!(made.status.success(), "oci-image.sh: {}", stderr(&made));
        let imported = Command::new("ctr")
            .args(["--address", stack().var("REGCRED_TEST_CONTAINERD")])
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(layout.with_extension("tar"))
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "ctr import: {}{}",
            stdout(&imported),
            stderr(&imported)
        );
    });
    NODE_IMAGE
}
