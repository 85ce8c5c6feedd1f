//! The binaries an image carries: the runtime as `/init`, and guest payloads
//! named `cargo:<package>`, built from the workspace that holds the config,
//! or from a nested workspace it names as a payload workspace:
//!
//! ```toml
//! [workspace.metadata.kiln]
//! payloads = ["images/hello"]   # directories of workspaces whose root package is a payload
//! ```
//!
//! A freestanding guest (`no_std`, `panic = "abort"`) lives in its own
//! workspace so its dependencies' features are not unified with the std
//! crates' of the main one.

use crate::installed::Layout;
use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::Endianness;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cargo profile payloads are built with: release, no unwinding, size-optimised.
pub const PROFILE: &str = "guest";

/// The runtime's profile: like [`PROFILE`], but unwinding, so PID 1 can
/// survive a panic instead of taking the kernel down with it.
pub const RUNTIME_PROFILE: &str = "runtime";

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "`cargo:{package}` is built from the cargo workspace that holds this config, and there is \
         none at or above {}; write the path of a static executable instead{installed}, or keep \
         the config in a cargo workspace that has the package `{package}` (`kiln new DIR` makes \
         an image project that is one; docs/config.md, \"Cargo payloads\")",
        near.display()
    )]
    NoWorkspace {
        near: PathBuf,
        package: String,
        /// A note naming an installed kiln's prebuilt payload of the package, if any.
        installed: String,
    },
    #[error(
        "kiln's installation has no prebuilt `{package}` at {}, which the built-in configs in {} \
         name as `cargo:{package}`; reinstall kiln with `./install.sh` from its source tree",
        path.display(),
        share.display()
    )]
    NotInstalled {
        package: String,
        path: PathBuf,
        share: PathBuf,
    },
    #[error("Cannot read the payload workspace list in {}: {reason}; write `[workspace.metadata.kiln] payloads = [\"<dir>\", ...]` with directories relative to it", manifest.display())]
    PayloadList { manifest: PathBuf, reason: String },
    #[error("Cannot read {}, named in [workspace.metadata.kiln] payloads; list only directories that hold a Cargo.toml", manifest.display())]
    PayloadManifest {
        manifest: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot run cargo to build `{package}`; is cargo on PATH (or $CARGO set)?")]
    CargoSpawn {
        package: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Building `{package}` failed (cargo exited with {status}); see cargo's messages above"
    )]
    CargoFailed {
        package: String,
        status: std::process::ExitStatus,
    },
    #[error("Cargo built `{package}` but named no executable for it; is it a binary package?")]
    NoExecutable { package: String },
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an x86-64 ELF executable: {reason}", path.display())]
    NotElf { path: PathBuf, reason: String },
    #[error(
        "{} is dynamically linked (it asks for {interp}), but the initramfs has no libc; \
         build it static: cargo build --release --target x86_64-unknown-linux-gnu with \
         RUSTFLAGS=\"-C target-feature=+crt-static\"",
        path.display()
    )]
    Dynamic { path: PathBuf, interp: String },
    #[error(
        "No kiln-runtime found: the image is not in kiln's source tree, KILN_RUNTIME is unset, \
         and there is none beside {} nor in {}; install kiln with `./install.sh` from its \
         source tree (docs/install.md), or set [runtime] binary in the image",
        kiln.display(),
        lib.display()
    )]
    NoRuntime { kiln: PathBuf, lib: PathBuf },
    #[error(
        "The kiln-runtime installed at {} is dynamically linked (it asks for {interp}), but it \
         runs as /init where there is no libc: it was built without the workspace's \
         static-linking config (.cargo/config.toml), which `cargo install` ignores; install \
         kiln with `./install.sh` from its source tree instead (docs/install.md)",
        path.display()
    )]
    DynamicInstalled { path: PathBuf, interp: String },
}

/// Finds the cargo workspace root at or above `near`.
pub fn workspace_root(near: &Path) -> Option<PathBuf> {
    let start = std::fs::canonicalize(near).ok()?;
    start.ancestors().find_map(|dir| {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).ok()?;
        text.lines()
            .any(|l| l.trim() == "[workspace]")
            .then(|| dir.to_path_buf())
    })
}

/// The executable of a `cargo:<package>` payload named by a config in
/// `near`: the prebuilt one when the config is one of an installed kiln's
/// own (see [`crate::installed`]), else built by [`cargo_build`].
pub fn cargo_payload(package: &str, near: &Path) -> Result<PathBuf, PayloadError> {
    match Layout::current() {
        Some(layout) if layout.holds(near) => prebuilt(&layout, package),
        _ => cargo_build(package, near),
    }
}

/// An installed kiln's prebuilt payload of `package`.
fn prebuilt(layout: &Layout, package: &str) -> Result<PathBuf, PayloadError> {
    let path = layout.payload(package);
    if !path.is_file() {
        return Err(PayloadError::NotInstalled {
            package: package.to_string(),
            path,
            share: layout.share.clone(),
        });
    }
    Ok(path)
}

fn no_workspace(package: &str, near: &Path) -> PayloadError {
    let installed = Layout::current()
        .map(|l| l.payload(package))
        .filter(|p| p.is_file())
        .map(|p| format!(" (kiln's own prebuilt one is {})", p.display()))
        .unwrap_or_default();
    PayloadError::NoWorkspace {
        near: near.to_path_buf(),
        package: package.to_string(),
        installed,
    }
}

/// Builds the binary of `package` in the workspace above `near` with the
/// payload profile and returns the executable's path.
pub fn cargo_build(package: &str, near: &Path) -> Result<PathBuf, PayloadError> {
    cargo_build_with(package, near, PROFILE)
}

fn cargo_build_with(package: &str, near: &Path, profile: &str) -> Result<PathBuf, PayloadError> {
    let root = workspace_root(near).ok_or_else(|| no_workspace(package, near))?;
    let workspace = payload_workspace(&root, package)?.unwrap_or_else(|| root.clone());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let task = crate::progress::Task::step(format!("building {package}"));
    let output = Command::new(cargo)
        .current_dir(&workspace)
        .args(["build", "--quiet", "--profile", profile, "-p", package])
        .args(["--config", &remap_config(&root)])
        .args(["--message-format", "json-render-diagnostics"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| PayloadError::CargoSpawn {
            package: package.to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(PayloadError::CargoFailed {
            package: package.to_string(),
            status: output.status,
        });
    }
    let exe = executable_from_messages(&output.stdout, package).ok_or_else(|| {
        PayloadError::NoExecutable {
            package: package.to_string(),
        }
    })?;
    task.finish(exe.display().to_string());
    Ok(exe)
}

/// The nested workspace among `root`'s `[workspace.metadata.kiln] payloads`
/// whose root package is `package`, if one is.
fn payload_workspace(root: &Path, package: &str) -> Result<Option<PathBuf>, PayloadError> {
    let manifest = root.join("Cargo.toml");
    let list_err = |reason: String| PayloadError::PayloadList {
        manifest: manifest.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&manifest).map_err(|e| list_err(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| list_err(e.to_string()))?;
    let payloads = table
        .get("workspace")
        .and_then(|w| w.get("metadata"))
        .and_then(|m| m.get("kiln"))
        .and_then(|k| k.get("payloads"));
    let Some(payloads) = payloads else {
        return Ok(None);
    };
    let dirs = payloads
        .as_array()
        .ok_or_else(|| list_err("`payloads` is not an array".into()))?;
    for dir in dirs {
        let dir = dir
            .as_str()
            .ok_or_else(|| list_err(format!("`payloads` holds {dir}, not a directory name")))?;
        let nested = root.join(dir);
        let manifest = nested.join("Cargo.toml");
        let text =
            std::fs::read_to_string(&manifest).map_err(|source| PayloadError::PayloadManifest {
                manifest: manifest.clone(),
                source,
            })?;
        let name = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("package")?.get("name")?.as_str().map(str::to_string));
        if name.as_deref() == Some(package) {
            return Ok(Some(nested));
        }
    }
    Ok(None)
}

/// Rust embeds source paths (panic locations); map the ones that depend on
/// this machine, the cargo home with the registry sources and the workspace
/// itself, to fixed names so payloads are the same bytes on every machine.
/// `root` is the outer workspace: a nested payload workspace and the path
/// dependencies it shares with the outer one are all below it.
/// Passed with `--config`, which cargo appends to the workspace's own
/// rustflags instead of replacing them (as RUSTFLAGS would).
fn remap_config(root: &Path) -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let flag = |from: &Path, to: &str| format!("'--remap-path-prefix={}={to}'", from.display());
    format!(
        "target.x86_64-unknown-linux-gnu.rustflags=[{}, {}]",
        flag(&cargo_home, "/cargo"),
        flag(root, "/kiln")
    )
}

/// Picks the executable of `package`'s binary target from cargo's JSON messages.
fn executable_from_messages(stdout: &[u8], package: &str) -> Option<PathBuf> {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["name"]
                .as_str()
                .map(|n| n == package)
                .unwrap_or(false)
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Refuses an executable that needs a dynamic loader: nothing in the
/// initramfs provides one.
pub fn check_static(path: &Path) -> Result<(), PayloadError> {
    let data = std::fs::read(path).map_err(|source| PayloadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let not_elf = |reason: String| PayloadError::NotElf {
        path: path.to_path_buf(),
        reason,
    };
    let file = ElfFile64::<Endianness>::parse(&*data).map_err(|e| not_elf(e.to_string()))?;
    let endian = file.endian();
    if file.elf_header().e_machine.get(endian) != elf::EM_X86_64 {
        return Err(not_elf("its machine type is not x86-64".into()));
    }
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) == elf::PT_INTERP {
            let interp = ph
                .data(endian, &*data)
                .ok()
                .map(|d| {
                    String::from_utf8_lossy(d)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_else(|| "an interpreter".into());
            return Err(PayloadError::Dynamic {
                path: path.to_path_buf(),
                interp,
            });
        }
    }
    Ok(())
}

/// Finds the runtime to install as `/init`, in this order: the image's
/// `[runtime] binary`; `$KILN_RUNTIME`; for one of an installed kiln's own
/// images, its installed runtime; built from the kiln workspace that holds
/// the image; beside the running kiln binary; installed beside it
/// (`PREFIX/lib/kiln`).
pub fn runtime_binary(
    configured: Option<&Path>,
    image_dir: &Path,
) -> Result<PathBuf, PayloadError> {
    let found = if let Some(p) = configured {
        p.to_path_buf()
    } else if let Some(p) = std::env::var_os("KILN_RUNTIME") {
        PathBuf::from(p)
    } else if let Some(p) = Layout::current()
        .filter(|l| l.holds(image_dir))
        .and_then(|l| l.runtime())
    {
        return installed_runtime(p);
    } else if workspace_root(image_dir).is_some_and(|r| r.join("runtime/Cargo.toml").is_file()) {
        cargo_build_with("kiln-runtime", image_dir, RUNTIME_PROFILE)?
    } else {
        let kiln = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("kiln"));
        return runtime_beside(&std::fs::canonicalize(&kiln).unwrap_or(kiln));
    };
    check_static(&found)?;
    Ok(found)
}

/// The runtime a kiln at `kiln` ships with: beside it (a build tree), or
/// in its installation's `lib/kiln`.
fn runtime_beside(kiln: &Path) -> Result<PathBuf, PayloadError> {
    let layout = Layout::around(kiln);
    let beside = kiln.with_file_name("kiln-runtime");
    let found = if beside.is_file() {
        beside
    } else {
        layout.runtime().ok_or_else(|| PayloadError::NoRuntime {
            kiln: kiln.to_path_buf(),
            lib: layout.lib.clone(),
        })?
    };
    installed_runtime(found)
}

/// Checks a runtime kiln did not build itself: one that is dynamic was
/// installed the wrong way, and the error says how to install it.
fn installed_runtime(path: PathBuf) -> Result<PathBuf, PayloadError> {
    match check_static(&path) {
        Err(PayloadError::Dynamic { path, interp }) => {
            Err(PayloadError::DynamicInstalled { path, interp })
        }
        other => other.map(|()| path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_in_cargo_messages() {
        let msgs = br#"{"reason":"compiler-artifact","target":{"name":"dep"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"kiln-hello","kind":["bin"]},"executable":"/t/guest/kiln-hello"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_messages(msgs, "kiln-hello"),
            Some(PathBuf::from("/t/guest/kiln-hello"))
        );
        assert_eq!(executable_from_messages(msgs, "other"), None);
    }

    #[test]
    fn refuses_a_dynamic_executable_and_accepts_a_static_one() {
        // /bin/true on this Debian host is dynamically linked.
        let e = check_static(Path::new("/bin/true"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is dynamically linked (it asks for /lib64/ld-linux-x86-64.so.2)"),
            "{e}"
        );
        // The test binary itself is built with +crt-static by the workspace config.
        let me = std::env::current_exe().unwrap();
        check_static(&me).unwrap();
    }

    #[test]
    fn finds_a_nested_payload_workspace_by_its_package() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"a\"]\n[workspace.metadata.kiln]\npayloads = [\"guests/g\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("guests/g")).unwrap();
        std::fs::write(
            root.join("guests/g/Cargo.toml"),
            "[workspace]\n[package]\nname = \"guest-g\"\n",
        )
        .unwrap();
        assert_eq!(
            payload_workspace(root, "guest-g").unwrap(),
            Some(root.join("guests/g"))
        );
        assert_eq!(payload_workspace(root, "a").unwrap(), None);

        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\n[workspace.metadata.kiln]\npayloads = [\"nowhere\"]\n",
        )
        .unwrap();
        let e = payload_workspace(root, "a").unwrap_err().to_string();
        assert!(
            e.contains("nowhere/Cargo.toml, named in [workspace.metadata.kiln] payloads"),
            "{e}"
        );
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\n[workspace.metadata.kiln]\npayloads = \"guests/g\"\n",
        )
        .unwrap();
        let e = payload_workspace(root, "a").unwrap_err().to_string();
        assert!(e.contains("`payloads` is not an array"), "{e}");
    }

    #[test]
    fn this_workspace_builds_hello_in_its_own() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let found = payload_workspace(&root, "kiln-hello").unwrap();
        assert_eq!(found, Some(root.join("images/hello")));
        assert_eq!(payload_workspace(&root, "kiln-guest-init").unwrap(), None);
    }

    #[test]
    fn a_runtime_installed_beside_kiln_must_be_static() {
        let d = tempfile::tempdir().unwrap();
        // A `cargo install`ed kiln without a runtime.
        let kiln = d.path().join("bin/kiln");
        std::fs::create_dir_all(d.path().join("bin")).unwrap();
        let e = runtime_beside(&kiln).unwrap_err().to_string();
        assert!(e.contains("there is none beside"), "{e}");
        assert!(e.contains("install kiln with `./install.sh`"), "{e}");

        // `cargo install --path runtime` beside it: dynamic, refused with
        // how to install it instead.
        std::fs::copy("/bin/true", d.path().join("bin/kiln-runtime")).unwrap();
        let e = runtime_beside(&kiln).unwrap_err().to_string();
        assert!(e.contains("is dynamically linked"), "{e}");
        assert!(e.contains("`cargo install` ignores"), "{e}");

        // install.sh's layout: PREFIX/lib/kiln/kiln-runtime, static.
        std::fs::remove_file(d.path().join("bin/kiln-runtime")).unwrap();
        std::fs::create_dir_all(d.path().join("lib/kiln")).unwrap();
        let me = std::env::current_exe().unwrap();
        std::fs::copy(&me, d.path().join("lib/kiln/kiln-runtime")).unwrap();
        assert_eq!(
            runtime_beside(&kiln).unwrap(),
            d.path().join("lib/kiln/kiln-runtime")
        );
    }

    #[test]
    fn an_installed_payload_must_be_there() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::around(&d.path().join("bin/kiln"));
        let e = prebuilt(&layout, "kiln-hello").unwrap_err().to_string();
        assert!(e.contains("has no prebuilt `kiln-hello`"), "{e}");
        std::fs::create_dir_all(&layout.lib).unwrap();
        std::fs::write(layout.lib.join("kiln-hello"), "").unwrap();
        assert_eq!(
            prebuilt(&layout, "kiln-hello").unwrap(),
            layout.lib.join("kiln-hello")
        );
    }

    #[test]
    fn refuses_a_non_elf() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert!(matches!(check_static(&p), Err(PayloadError::NotElf { .. })));
    }
}
