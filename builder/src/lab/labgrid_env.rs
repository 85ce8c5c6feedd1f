//! `kiln labgrid-env`: a labgrid environment that boots a built image on
//! the emulated target, through labgrid's `QEMUDriver` (power and console),
//! for labgrid's pytest plugin (`pytest --lg-env FILE`) and for
//! `kiln test DIR --target labgrid:FILE`.
//!
//! The machine is the one `kiln test --target qemu` boots (q35, `-cpu max`,
//! the Intel IOMMU, the image's memory, CPUs and devices); the
//! `QEMUDriver` starts it paused and lets it run once its console is
//! connected, so no line is lost. The environment names the image it was
//! written for (`options: kiln-image-digest`), and `kiln test` refuses to
//! judge another image through it.

use super::built::Built;
use super::lava_job::quote;
use crate::emulator::{self, target_cmdline, Accel, Shape};
use serde_yaml_ng::{Mapping, Value};

/// The option naming the image an environment boots.
pub const DIGEST_OPTION: &str = "kiln-image-digest";

#[derive(Debug, thiserror::Error)]
pub enum LabgridEnvError {
    #[error("cannot write the environment as YAML")]
    Yaml(#[source] serde_yaml_ng::Error),
}

/// The environment, as YAML text.
pub fn write(built: &Built, accel: Accel) -> Result<String, LabgridEnvError> {
    let yaml = serde_yaml_ng::to_string(&env(built, accel)).map_err(LabgridEnvError::Yaml)?;
    Ok(format!(
        "# labgrid environment for the kiln image {} ({}), written by kiln {}:\n\
         # the emulated target booting it. Use it with labgrid's pytest plugin\n\
         # (pytest --lg-env FILE) or judge the image through it:\n\
         #   kiln test {} --target labgrid:FILE\n{yaml}",
        built.manifest.name,
        built.digest(),
        env!("CARGO_PKG_VERSION"),
        built.dir.display(),
    ))
}

/// The environment.
pub fn env(built: &Built, accel: Accel) -> Value {
    let target = built.manifest.target.clone().unwrap_or_default();
    let shape = Shape::of(&target, accel);
    // QEMUDriver has no initramfs key: it goes with the extra arguments.
    let mut extra = vec![
        "-initrd".to_string(),
        quote(&built.files.initrd.display().to_string()),
        "-smp".to_string(),
        shape.smp.to_string(),
        "-vga".to_string(),
        "none".to_string(),
        "-no-reboot".to_string(),
    ];
    for dev in &shape.devices {
        extra.push("-device".to_string());
        extra.push(quote(dev));
    }
    extra.extend(shape.extra.iter().map(|a| quote(a)));
    let driver = map(vec![
        ("qemu_bin", s("qemu")),
        ("machine", s(&shape.machine)),
        ("cpu", s(shape.cpu)),
        ("memory", s(format!("{}M", shape.memory_mib))),
        ("kernel", s("kiln-kernel")),
        ("boot_args", s(target_cmdline(&built.files.cmdline, accel))),
        ("extra_args", s(extra.join(" "))),
        // `-display none`: no firmware text on the serial line, as on `kiln test`.
        ("display", s("fb-headless")),
    ]);
    map(vec![
        (
            "targets",
            map(vec![(
                "main",
                map(vec![("drivers", map(vec![("QEMUDriver", driver)]))]),
            )]),
        ),
        (
            "images",
            map(vec![
                ("kiln-kernel", s(built.files.kernel.display().to_string())),
                ("kiln-initrd", s(built.files.initrd.display().to_string())),
            ]),
        ),
        ("tools", map(vec![("qemu", s(emulator::QEMU))])),
        (
            "options",
            map(vec![
                ("kiln-image", s(&built.manifest.name)),
                (DIGEST_OPTION, s(built.digest())),
            ]),
        ),
    ])
}

fn s(text: impl Into<String>) -> Value {
    Value::String(text.into())
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::built::tests::fake_built;

    #[test]
    fn the_environment_boots_the_image_on_the_emulated_target() {
        let d = tempfile::tempdir().unwrap();
        let built = Built::load(&fake_built(d.path(), serde_json::json!([{"name": "a"}]))).unwrap();
        let env = env(&built, Accel::Tcg);
        let q = &env["targets"]["main"]["drivers"]["QEMUDriver"];
        assert_eq!(q["machine"].as_str(), Some("q35,accel=tcg"));
        assert_eq!(q["cpu"].as_str(), Some("max"));
        assert_eq!(q["memory"].as_str(), Some("1024M"));
        assert_eq!(
            q["boot_args"].as_str(),
            Some("console=ttyS0 panic=-1 quiet no_timer_check")
        );
        assert_eq!(
            q["extra_args"].as_str(),
            Some(
                format!(
                    "-initrd {}/initramfs.cpio.zst -smp 2 -vga none -no-reboot -device intel-iommu,intremap=on,caching-mode=on -device edu -s",
                    built.dir.display()
                )
                .as_str()
            )
        );
        assert_eq!(
            env["images"]["kiln-kernel"].as_str(),
            Some(format!("{}/vmlinuz", built.dir.display()).as_str())
        );
        assert_eq!(env["options"][DIGEST_OPTION].as_str(), Some("sha256:bb"));
        let text = write(&built, Accel::Tcg).unwrap();
        assert!(text.contains("pytest --lg-env FILE"), "{text}");
        assert_eq!(serde_yaml_ng::from_str::<Value>(&text).unwrap(), env);
    }
}
