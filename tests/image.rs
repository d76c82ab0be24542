//! The Dockerfile's build, done here the way the Dockerfile does it — its build stage's
//! COPY lines, ENV and RUN, read from the file itself — since no container engine runs
//! here. The binary it makes must be static (no interpreter, no shared libraries, so it
//! runs on distroless "static") and must do real work: `sync` against the stack, reaching
//! it by host name, so name resolution and TLS work in a static binary.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

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

/// Whether an ELF executable is static: no program interpreter and no DT_NEEDED entry.
fn static_elf(bytes: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| u16::from_le_bytes(bytes[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| {
        usize::try_from(u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap())).unwrap()
    };
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 file".into());
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20), usize::from(u16_at(0x36)), u16_at(0x38));
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * phentsize;
        match u32_at(ph) {
            3 => return Err("it has a program interpreter (PT_INTERP)".into()),
            2 => {
                let (offset, size) = (u64_at(ph + 8), u64_at(ph + 32));
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(entry) {
                        0 => break,
                        1 => return Err("it needs shared libraries (DT_NEEDED)".into()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn static_elf_tells_static_from_dynamic() {
    // The test's own executable is a normal dynamic one.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(static_elf(&me).is_err());
    assert!(static_elf(b"#!/bin/sh\n").is_err());
}

/// Runs the Dockerfile's build stage here; the binary it makes (in a temp dir).
fn build_as_the_dockerfile_does() -> (tempfile::TempDir, PathBuf) {
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

#[tokio::test]
async fn the_dockerfile_builds_a_static_binary_that_does_the_job() {
    let (_dir, binary) = build_as_the_dockerfile_does();
    let bytes = std::fs::read(&binary).expect("the binary the image copies");
    if let Err(why) = static_elf(&bytes) {
        panic!("{} is not static: {why}", binary.display());
    }
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let said = format!("{}{}", stdout(&ldd), stderr(&ldd));
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "ldd: {said}"
    );

    let version = Command::new(&binary)
        .env_clear()
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert_eq!(
        stdout(&version).trim(),
        format!("regcred {}", env!("CARGO_PKG_VERSION"))
    );

    sync_by_host_name(&binary).await;
}

/// Real work, by host name: the API server as https://localhost (its certificate names
/// localhost), the fake AWS as http://localhost.
async fn sync_by_host_name(binary: &Path) {
    let s = stack();
    let admin = s.admin().await;
    let secret = unique("pull");
    let ns = unique("image");
    create_namespace(&admin, &ns, &[]).await;
    let who = chart_identity(&admin, &[&secret], false).await;
    let kubeconfig = std::fs::read_to_string(&who.kubeconfig)
        .unwrap()
        .replace("https://127.0.0.1:", "https://localhost:");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
    let (_config_dir, config) = config_file(&format!(
        "secrets:\n  - name: {secret}\n    registries:\n{}      - public.ecr.aws\n    namespaces:\n      include: [\"{ns}\"]\n",
        registry_alias_yaml()
    ));
    let by_name = |url: &str| url.replace("127.0.0.1", "localhost");
    let out = Command::new(binary)
        .env_clear()
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .env("AWS_ENDPOINT_URL", by_name(s.var("AWS_ENDPOINT_URL")))
        .env(
            "AWS_ENDPOINT_URL_ECR_PUBLIC",
            by_name(s.var("AWS_ENDPOINT_URL_ECR_PUBLIC")),
        )
        .env("AWS_ACCESS_KEY_ID", unique("AKIAIMAGE").replace('-', ""))
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["sync", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).starts_with("synced 1 namespaces (1 written"),
        "{}",
        stdout(&out)
    );
    let written = get_secret(&admin, &ns, &secret).await.expect("secret");
    let auths = dockerconfig(&written)["auths"].clone();
    assert!(auths.get("public.ecr.aws").is_some(), "{auths}");
}
