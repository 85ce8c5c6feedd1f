//! `kiln new DIR`: writes a small image project a user builds, changes and
//! tests anywhere: an image config, one VM config, and the VM's guest, a
//! Linux `/init` program that is its own cargo workspace (so `cargo:guest`
//! resolves from it). The files are `builder/template/`.

use kiln_schema::config::VmName;
use std::path::{Path, PathBuf};

/// The template's files: their place in the project and their text.
/// `{{name}}` stands for the image's name.
const FILES: &[(&str, &str)] = &[
    ("appliance.toml", include_str!("../template/appliance.toml")),
    ("vm.toml", include_str!("../template/vm.toml")),
    ("Cargo.toml", include_str!("../template/Cargo.toml")),
    (
        ".cargo/config.toml",
        include_str!("../template/.cargo/config.toml"),
    ),
    ("src/main.rs", include_str!("../template/src/main.rs")),
    (".gitignore", include_str!("../template/gitignore")),
];

/// The image config `kiln new` writes, relative to the project.
pub const IMAGE_FILE: &str = "appliance.toml";

#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("{} already exists and is not an empty directory; give a new directory to `kiln new`", dir.display())]
    Exists { dir: PathBuf },
    #[error("{} names no directory; give one such as `kiln new my-appliance`", dir.display())]
    NoName { dir: PathBuf },
    #[error(
        "\"{name}\" is not a valid image name (a-z, 0-9, '_' and '-'); choose one with --name"
    )]
    BadName { name: String },
    #[error("Cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `kiln new` wrote.
#[derive(Debug)]
pub struct Created {
    pub name: String,
    /// The image config to build and test.
    pub image: PathBuf,
}

/// Writes the project into `dir` (missing or empty), its image named `name`
/// or after `dir`.
pub fn create(dir: &Path, name: Option<&str>) -> Result<Created, NewError> {
    let name = match name {
        Some(n) => n.to_string(),
        // `kiln new .` is named after the directory it is.
        None => std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .ok_or_else(|| NewError::NoName {
                dir: dir.to_path_buf(),
            })?,
    };
    if VmName::new(&name).is_err() {
        return Err(NewError::BadName { name });
    }
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
    };
    if !empty {
        return Err(NewError::Exists {
            dir: dir.to_path_buf(),
        });
    }
    for (file, text) in FILES {
        let path = dir.join(file);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(|source| NewError::Io {
            action: "create the directory",
            path: parent.to_path_buf(),
            source,
        })?;
        // create_new: never overwrite a file that appeared meanwhile.
        let mut f = std::fs::File::create_new(&path).map_err(|source| NewError::Io {
            action: "create",
            path: path.clone(),
            source,
        })?;
        std::io::Write::write_all(&mut f, text.replace("{{name}}", &name).as_bytes()).map_err(
            |source| NewError::Io {
                action: "write",
                path: path.clone(),
                source,
            },
        )?;
    }
    Ok(Created {
        name,
        image: dir.join(IMAGE_FILE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Image;

    #[test]
    fn writes_a_project_whose_image_loads() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("My-App");
        let created = create(&dir, None).unwrap();
        assert_eq!(created.name, "my-app");
        for (file, _) in FILES {
            assert!(dir.join(file).is_file(), "{file} missing");
        }
        let image = Image::load(&created.image).unwrap();
        assert_eq!(image.config.name, "my-app");
        assert_eq!(image.vms.len(), 1);
        assert_eq!(image.vms[0].config.name.as_str(), "guest");
        // `cargo:guest` resolves from the project's own workspace.
        assert_eq!(
            crate::payload::workspace_root(&dir).unwrap(),
            std::fs::canonicalize(&dir).unwrap()
        );
    }

    #[test]
    fn never_writes_into_a_directory_in_use() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("notes.txt"), "mine").unwrap();
        let e = create(d.path(), Some("x")).unwrap_err().to_string();
        assert!(e.contains("is not an empty directory"), "{e}");
        assert_eq!(
            std::fs::read_to_string(d.path().join("notes.txt")).unwrap(),
            "mine"
        );
        let file = d.path().join("notes.txt");
        assert!(matches!(
            create(&file, Some("x")),
            Err(NewError::Exists { .. })
        ));

        let e = create(&d.path().join("Bad Name"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("choose one with --name"), "{e}");
        // An empty directory is fine, even as `.`.
        std::fs::create_dir(d.path().join("empty")).unwrap();
        create(&d.path().join("empty"), None).unwrap();
        std::fs::create_dir(d.path().join("here")).unwrap();
        let here = d.path().join("here/.");
        assert_eq!(create(&here, None).unwrap().name, "here");
        assert!(matches!(
            create(Path::new("/"), None),
            Err(NewError::NoName { .. } | NewError::Exists { .. })
        ));
    }
}
