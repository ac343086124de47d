//! The binary finds ONNX Runtime by itself: with no `ORT_DYLIB_PATH` it
//! loads the library `scripts/setup` installed; with nothing anywhere it
//! fails with every place it looked and the install command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use attnwatch::model::library::{system_dirs, Search};

fn nab_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/nab-dev/data/realTraffic/speed_7578.csv")
}

fn score(out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attnwatch"));
    cmd.arg("score")
        .arg("--input")
        .arg(nab_file())
        .arg("--output")
        .arg(out)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("ATTNWATCH_MODEL__ONNXRUNTIME_LIBRARY")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attnwatch-ortlib-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn without_ort_dylib_path_the_setup_library_is_found() {
    let dir = tmp_dir("found");
    let out = dir.join("scores.csv");
    let o = score(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("scripts/setup cache"),
        "not found through the setup cache: {stderr}"
    );
    let rows = std::fs::read_to_string(&out).unwrap().lines().count();
    assert!(rows > 1000, "{rows} rows");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn with_nothing_installed_the_error_lists_every_place_and_how_to_install() {
    let dir = tmp_dir("none");
    let home = dir.join("home");
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_attnwatch")).parent().unwrap();
    // What the binary will search with this environment.
    let expected = Search {
        configured: None,
        env: None,
        cache: Some(home.join(".cache/attnwatch")),
        exe_dir: Some(binary_dir.to_path_buf()),
        system_dirs: system_dirs(None),
    };
    let o = score(&dir.join("scores.csv"))
        .env("HOME", &home)
        .env_remove("ATTNWATCH_CACHE")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    match expected.find() {
        Ok(found) => {
            // A system library exists here: the binary must use it.
            assert!(
                o.status.success(),
                "{} exists, yet: {stderr}",
                found.path.display()
            );
        }
        Err(_) => {
            assert!(
                !o.status.success(),
                "succeeded with nothing installed: {stderr}"
            );
            for want in [
                "no ONNX Runtime library",
                "ORT_DYLIB_PATH: not set",
                &format!("{}/.cache/attnwatch/venv/lib/python3*", home.display()),
                &format!("beside the binary: {}", binary_dir.display()),
                "system library path: ",
                "scripts/setup",
            ] {
                assert!(stderr.contains(want), "{want:?} missing from:\n{stderr}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
