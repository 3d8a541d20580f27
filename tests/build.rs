//! Assembles the stub guests (tests/stub/*.S) into ELFs loaded at 16 MiB, like a
//! vmlinux, and exposes their paths as `MICA_<NAME>_GUEST` (`stub.S` is
//! `MICA_STUB_GUEST`, `idle.S` is `MICA_IDLE_GUEST`, ...).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for name in ["stub", "idle", "counter", "reset", "fb"] {
        let src = PathBuf::from(format!("stub/{name}.S"));
        println!("cargo:rerun-if-changed={}", src.display());
        let obj = out.join(format!("{name}.o"));
        let elf = out.join(format!("{name}.elf"));
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
        println!(
            "cargo:rustc-env=MICA_{}_GUEST={}",
            name.to_uppercase(),
            elf.display()
        );
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}
