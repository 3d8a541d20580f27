//! Assembles the stub guest (tests/stub/stub.S) into an ELF loaded at 16 MiB,
//! like a vmlinux, and exposes its path as `MICA_STUB_GUEST`.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let src = PathBuf::from("stub/stub.S");
    println!("cargo:rerun-if-changed={}", src.display());
    let obj = out.join("stub.o");
    let elf = out.join("stub.elf");
    run(Command::new("cc")
        .args(["-c", "-nostdlib", "-o"])
        .arg(&obj)
        .arg(&src));
    run(Command::new("ld")
        .args([
            "-static",
            "-nostdlib",
            "--no-dynamic-linker",
            "-z",
            "noexecstack",
        ])
        .args(["-Ttext=0x1000000", "-e", "_start", "-o"])
        .arg(&elf)
        .arg(&obj));
    println!("cargo:rustc-env=MICA_STUB_GUEST={}", elf.display());
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}
