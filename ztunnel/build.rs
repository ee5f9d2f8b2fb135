//! Compiles the eBPF capture programs (`ebpf/capture.bpf.c`) with clang into `OUT_DIR`, where
//! `capture::ebpf` embeds the object with `aya::include_bytes_aligned!`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let src_dir = manifest.join("../ebpf");
    let source = src_dir.join("capture.bpf.c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("capture.bpf.o");
    println!("cargo:rerun-if-changed={}", source.display());
    println!(
        "cargo:rerun-if-changed={}",
        src_dir.join("capture.h").display()
    );
    println!("cargo:rerun-if-env-changed=CLANG");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // linux/types.h includes <asm/types.h>, which Debian keeps under the multiarch directory.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args([
            "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", &multiarch,
        ])
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`{clang}` failed ({s}) compiling {}: see the errors above (the BPF headers come from \
             libbpf-dev: `apt-get install libbpf-dev`)",
            source.display()
        ),
        Err(e) => panic!(
            "cannot run `{clang}` to compile the eBPF capture programs ({e}): install clang and \
             libbpf-dev (`apt-get install clang libbpf-dev`, or run .ci/run), or set CLANG"
        ),
    }
}
