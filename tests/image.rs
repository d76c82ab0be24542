//! The Dockerfile's build, done here the way the Dockerfile does it — its build stage's
//! COPY lines, ENV and RUN, read from the file itself — since no container engine runs
//! here. The binary it makes must be static (no interpreter, no shared libraries, so it
//! runs on distroless "static") and must do real work: `sync` against the stack, reaching
//! it by host name, so name resolution and TLS work in a static binary.

mod common;

use std::path::Path;
use std::process::Command;

use common::image::build_as_the_dockerfile_does;
use common::*;

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
