//! Finding the ONNX Runtime shared library that the engine loads.
//!
//! Search order, first existing file wins:
//! 1. `model.onnxruntime_library` (config, or `ATTNWATCH_MODEL__ONNXRUNTIME_LIBRARY`):
//!    when set it must exist, or loading fails with that path named;
//! 2. `ORT_DYLIB_PATH` (a missing file is skipped with a warning);
//! 3. the library `scripts/setup` installs: `$ATTNWATCH_CACHE` (default
//!    `~/.cache/attnwatch`)`/venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1`;
//! 4. beside the binary: `libonnxruntime.so.1.31.1`, then `libonnxruntime.so`;
//! 5. the system library path: each directory of `LD_LIBRARY_PATH`, then
//!    `/usr/local/lib`, `/usr/lib/<arch>-linux-gnu`, `/usr/lib`, `/lib`,
//!    with the same two names.
//!
//! When none exists, the error lists every place looked at and how to
//! install the library. [`Search`] holds the inputs (so the order is tested
//! without touching the process environment); [`Search::from_process`]
//! fills them from the environment.

use std::path::{Path, PathBuf};

use crate::config::ModelConfig;

/// Find the library for `cfg` in this process's environment, and say
/// where it was found (at info level).
pub fn find(cfg: &ModelConfig) -> Result<Found, LibraryError> {
    let found = Search::from_process(cfg.onnxruntime_library.as_deref()).find()?;
    tracing::info!(path = %found.path.display(), source = found.source, "ONNX Runtime library");
    Ok(found)
}

/// The ONNX Runtime version this build is made for (`api-31`).
pub const ORT_VERSION: &str = "1.31.1";

/// File names tried in a directory, most specific first.
fn names() -> [String; 2] {
    [
        format!("libonnxruntime.so.{ORT_VERSION}"),
        "libonnxruntime.so".to_owned(),
    ]
}

/// Why no library was found.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// `model.onnxruntime_library` names a file that does not exist.
    #[error("model.onnxruntime_library = {0} does not exist")]
    ConfiguredMissing(PathBuf),
    /// Nothing found anywhere.
    #[error(
        "no ONNX Runtime library (libonnxruntime.so {ORT_VERSION}) found. Looked in, in order:\n{}\n\
         Install it with `scripts/setup` (into ~/.cache/attnwatch, found from then on), \
         or point ORT_DYLIB_PATH or model.onnxruntime_library at a libonnxruntime.so {ORT_VERSION}",
        looked.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n")
    )]
    NotFound {
        /// Each place, with what it is.
        looked: Vec<String>,
    },
}

/// Where a library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The file.
    pub path: PathBuf,
    /// Which rule found it (`model.onnxruntime_library`, `ORT_DYLIB_PATH`,
    /// `scripts/setup cache`, `beside the binary`, `system library path`).
    pub source: &'static str,
}

/// The inputs of the search.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// `model.onnxruntime_library`.
    pub configured: Option<PathBuf>,
    /// `ORT_DYLIB_PATH`.
    pub env: Option<PathBuf>,
    /// The cache root `scripts/setup` installs into.
    pub cache: Option<PathBuf>,
    /// The directory of the running binary.
    pub exe_dir: Option<PathBuf>,
    /// System library directories, in order.
    pub system_dirs: Vec<PathBuf>,
}

impl Search {
    /// The search for this process: `configured` from the config, the rest
    /// from the environment.
    pub fn from_process(configured: Option<&Path>) -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache = var("ATTNWATCH_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/attnwatch")));
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf));
        Search {
            configured: configured
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf),
            env: var("ORT_DYLIB_PATH").map(PathBuf::from),
            cache,
            exe_dir,
            system_dirs: system_dirs(var("LD_LIBRARY_PATH").as_deref()),
        }
    }

    /// The first library that exists, in the order of the module docs.
    pub fn find(&self) -> Result<Found, LibraryError> {
        if let Some(p) = &self.configured {
            return if p.is_file() {
                Ok(found(p.clone(), "model.onnxruntime_library"))
            } else {
                Err(LibraryError::ConfiguredMissing(p.clone()))
            };
        }
        let mut looked = vec!["model.onnxruntime_library: not set".to_owned()];
        match &self.env {
            Some(p) if p.is_file() => return Ok(found(p.clone(), "ORT_DYLIB_PATH")),
            Some(p) => {
                tracing::warn!(path = %p.display(), "ORT_DYLIB_PATH names no file; searching on");
                looked.push(format!("ORT_DYLIB_PATH={} (no such file)", p.display()));
            }
            None => looked.push("ORT_DYLIB_PATH: not set".to_owned()),
        }
        match &self.cache {
            Some(cache) => {
                let venv_lib = cache.join("venv/lib");
                let tail =
                    format!("site-packages/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}");
                let mut pythons: Vec<PathBuf> = std::fs::read_dir(&venv_lib)
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                            .map(|e| e.path())
                            .collect()
                    })
                    .unwrap_or_default();
                pythons.sort();
                for py in &pythons {
                    let p = py.join(&tail);
                    if p.is_file() {
                        return Ok(found(p, "scripts/setup cache"));
                    }
                }
                looked.push(format!(
                    "scripts/setup cache: {}/python3*/{tail}",
                    venv_lib.display()
                ));
            }
            None => looked.push("scripts/setup cache: neither ATTNWATCH_CACHE nor HOME set".into()),
        }
        if let Some(dir) = &self.exe_dir {
            if let Some(p) = first_in(dir) {
                return Ok(found(p, "beside the binary"));
            }
            looked.push(format!("beside the binary: {}", dir.display()));
        }
        for dir in &self.system_dirs {
            if let Some(p) = first_in(dir) {
                return Ok(found(p, "system library path"));
            }
        }
        looked.push(format!(
            "system library path: {}",
            self.system_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Err(LibraryError::NotFound { looked })
    }
}

/// The system library directories: `ld_library_path`'s, then the
/// standard ones.
pub fn system_dirs(ld_library_path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ld_library_path
        .map(|v| std::env::split_paths(v).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/lib".to_owned(),
            format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH),
            "/usr/lib".to_owned(),
            "/lib".to_owned(),
        ]
        .map(PathBuf::from),
    );
    dirs
}

fn found(path: PathBuf, source: &'static str) -> Found {
    Found { path, source }
}

/// The first of [`names`] that is a file in `dir`.
fn first_in(dir: &Path) -> Option<PathBuf> {
    names()
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "attnwatch-lib-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
        fn file(&self, rel: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"").unwrap();
            p
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cache_lib() -> String {
        format!(
            "cache/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"
        )
    }

    fn everywhere(t: &Tmp) -> Search {
        Search {
            configured: Some(t.file("configured.so")),
            env: Some(t.file("env.so")),
            cache: Some(t.0.join("cache")),
            exe_dir: Some(t.0.join("bin")),
            system_dirs: vec![t.0.join("empty"), t.0.join("sys")],
        }
    }

    #[test]
    fn each_place_is_tried_in_order() {
        let t = Tmp::new("order");
        t.file(&cache_lib());
        t.file("bin/libonnxruntime.so");
        t.file(&format!("sys/libonnxruntime.so.{ORT_VERSION}"));
        let mut s = everywhere(&t);
        let mut sources = Vec::new();
        sources.push(s.find().unwrap());
        s.configured = None;
        sources.push(s.find().unwrap());
        s.env = None;
        sources.push(s.find().unwrap());
        s.cache = None;
        sources.push(s.find().unwrap());
        s.exe_dir = None;
        sources.push(s.find().unwrap());
        let got: Vec<_> = sources.iter().map(|f| f.source).collect();
        assert_eq!(
            got,
            [
                "model.onnxruntime_library",
                "ORT_DYLIB_PATH",
                "scripts/setup cache",
                "beside the binary",
                "system library path"
            ]
        );
        assert_eq!(sources[2].path, t.0.join(cache_lib()));
        assert_eq!(sources[3].path, t.0.join("bin/libonnxruntime.so"));
        assert!(sources[4]
            .path
            .ends_with(format!("sys/libonnxruntime.so.{ORT_VERSION}")));
    }

    #[test]
    fn a_configured_path_that_is_missing_is_an_error_not_skipped() {
        let t = Tmp::new("configured");
        t.file(&cache_lib());
        let s = Search {
            configured: Some(t.0.join("nope.so")),
            cache: Some(t.0.join("cache")),
            ..Search::default()
        };
        let e = s.find().unwrap_err();
        assert!(matches!(e, LibraryError::ConfiguredMissing(_)), "{e}");
        assert!(e.to_string().contains("nope.so"));
    }

    #[test]
    fn a_stale_env_path_is_skipped() {
        let t = Tmp::new("env");
        t.file(&cache_lib());
        let s = Search {
            env: Some(t.0.join("gone.so")),
            cache: Some(t.0.join("cache")),
            ..Search::default()
        };
        assert_eq!(s.find().unwrap().source, "scripts/setup cache");
    }

    #[test]
    fn not_found_lists_every_place_and_the_install_command() {
        let t = Tmp::new("none");
        let s = Search {
            env: Some(t.0.join("gone.so")),
            cache: Some(t.0.join("cache")),
            exe_dir: Some(t.0.join("bin")),
            system_dirs: vec![t.0.join("a"), t.0.join("b")],
            ..Search::default()
        };
        let msg = s.find().unwrap_err().to_string();
        for want in [
            "model.onnxruntime_library: not set",
            "gone.so (no such file)",
            "cache/venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1",
            "beside the binary",
            "/a, ",
            "/b",
            "scripts/setup",
        ] {
            assert!(msg.contains(want), "{want:?} missing from:\n{msg}");
        }
    }
}
