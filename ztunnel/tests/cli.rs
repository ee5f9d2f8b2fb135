//! The command line as an operator meets it. (Building this test also makes cargo build the
//! `ztunnel` binary that the end-to-end tests in `tests/` start.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ztunnel");

#[test]
fn check_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ztunnel.yaml");
    let out = Command::new(BIN)
        .args(["check", "--config", example])
        .output()
        .expect("run ztunnel check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn check_lists_every_error_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "trustDomain: a/b\nlisteners: {hbone: nope}\nworkloads: [{uid: x}]\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run ztunnel check");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "trustDomain",
        "listeners.hbone",
        "workloads[0].name",
        "workloads[0].ips",
        "workloads[0].node",
    ] {
        assert!(err.contains(path), "missing {path} in: {err}");
    }
}

#[test]
fn run_refuses_an_invalid_file_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "certificateTtl: soon\n").expect("write");
    let out = Command::new(BIN)
        .args(["run", "--node", "n1", "--config"])
        .arg(&path)
        .output()
        .expect("run ztunnel");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificateTtl"));
}
