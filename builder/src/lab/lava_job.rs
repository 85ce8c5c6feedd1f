//! `kiln lava-job`: a LAVA job definition for a built image.
//!
//! The job deploys the image, boots it, and watches the console with one
//! LAVA `monitors` test whose results are the VMs' status lines, so each VM
//! is a test case of its own in LAVA. Which deploy and boot, by method:
//!
//! - `qemu` (QEMU device types): the kernel and initramfs to tmpfs, booted
//!   with the emulated target's machine (q35, `-cpu max`, the Intel IOMMU,
//!   the image's devices) through the job context's `extra_options`;
//! - `minimal` (a board that boots what is on its disk, UEFI): the disk
//!   image (`disk.img`, with the UKI) through the device's flasher;
//! - any bootloader method (`ipxe`, `grub`, `u-boot`, ...): the kernel and
//!   initramfs over TFTP, the image's command line as `extra_kernel_args`,
//!   and the device's command set (`ramdisk` unless told otherwise).
//!
//! LAVA's verdicts are a convenience: a monitor sees a VM's exit code, not
//! its `expect`/`fail` patterns, panics or timeouts. kiln's judge on LAVA's
//! log (`kiln test DIR --target replay:output.yaml`) gives the verdicts.

use super::built::{Built, DISK};
use crate::emulator::{target_cmdline, Accel, Shape};
use serde_yaml_ng::{Mapping, Value};
use std::time::Duration;

/// The LAVA monitor's start: the first VM starting.
pub const MONITOR_START: &str = r"kiln: vm=\S+ state=starting";
/// The LAVA monitor's end: the runtime's last line.
pub const MONITOR_END: &str = r"kiln: appliance done ok=[0-9]+ failed=[0-9]+";

/// How long LAVA may take to download and deploy the image.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum LavaJobError {
    #[error("--boot minimal boots the disk image, and {} has no {DISK}; add \"disk\" to the image's [output] formats and rebuild, or use a bootloader method (e.g. --boot ipxe)", dir.display())]
    NoDisk { dir: std::path::PathBuf },
    #[error("cannot write the job as YAML")]
    Yaml(#[source] serde_yaml_ng::Error),
}

/// How the device boots the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMethod {
    /// LAVA's `qemu` method (QEMU device types).
    Qemu,
    /// Power on and read the console: the board boots its disk.
    Minimal,
    /// A bootloader method (`ipxe`, `grub`, `u-boot`, ...) with the device's
    /// named command set.
    Bootloader { method: String, commands: String },
}

impl BootMethod {
    /// `qemu`, `minimal`, or a bootloader method; `None`: `qemu` for the
    /// device type `qemu`, `minimal` for any other.
    pub fn parse(method: Option<&str>, device_type: &str, commands: Option<&str>) -> BootMethod {
        match method {
            Some("qemu") => BootMethod::Qemu,
            Some("minimal") => BootMethod::Minimal,
            Some(other) => BootMethod::Bootloader {
                method: other.to_string(),
                commands: commands.unwrap_or("ramdisk").to_string(),
            },
            None if device_type == "qemu" => BootMethod::Qemu,
            None => BootMethod::Minimal,
        }
    }
}

/// What `kiln lava-job` was asked for.
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub device_type: String,
    pub boot: BootMethod,
    /// Where the lab fetches the artifacts: a base URL the file names are
    /// appended to [default: `file://` and the image directory].
    pub artifacts: Option<String>,
    /// The accelerator of the `qemu` method.
    pub accel: Accel,
    /// [default: `kiln <image>`].
    pub job_name: Option<String>,
    /// Power-on to the first VM starting [default: kiln's, 120s].
    pub boot_timeout: Option<Duration>,
}

/// The job definition, as YAML text.
pub fn write(built: &Built, opts: &JobOptions) -> Result<String, LavaJobError> {
    let job = job(built, opts)?;
    let yaml = serde_yaml_ng::to_string(&job).map_err(LavaJobError::Yaml)?;
    let dir = built.dir.display();
    Ok(format!(
        "# LAVA job for the kiln image {} ({}), written by kiln {}.\n\
         # Judge LAVA's log with kiln's rules (the verdicts that count):\n\
         #   kiln test {dir} --target replay:output.yaml --junit report.xml\n{yaml}",
        built.manifest.name,
        built.digest(),
        env!("CARGO_PKG_VERSION"),
    ))
}

/// The job definition.
pub fn job(built: &Built, opts: &JobOptions) -> Result<Value, LavaJobError> {
    let m = &built.manifest;
    let boot_timeout = opts
        .boot_timeout
        .unwrap_or(crate::harness::judge::DEFAULT_BOOT_TIMEOUT);
    // The monitor waits from the boot to the `done` line, as `kiln test`
    // does; its grace for the `done` line included.
    let test_timeout = boot_timeout + built.longest_vm_timeout() + crate::harness::judge::GRACE;
    let job_timeout = DEPLOY_TIMEOUT + boot_timeout + test_timeout;

    let mut metadata = Mapping::new();
    for (k, v) in [
        ("kiln.image", m.name.clone()),
        ("kiln.image.digest", built.digest()),
        ("kiln.kernel.release", m.kernel.release.clone()),
        ("kiln.version", env!("CARGO_PKG_VERSION").to_string()),
    ] {
        metadata.insert(s(k), s(v));
    }

    let mut job = Mapping::new();
    job.insert(s("device_type"), s(&opts.device_type));
    job.insert(
        s("job_name"),
        s(opts
            .job_name
            .clone()
            .unwrap_or_else(|| format!("kiln {}", m.name))),
    );
    job.insert(s("priority"), s("medium"));
    job.insert(s("visibility"), s("public"));
    // A monitor gives up after the connection timeout without a matching
    // line: one VM's start to its end may take that long.
    job.insert(
        s("timeouts"),
        map([
            ("job", seconds(job_timeout)),
            ("connection", seconds(test_timeout)),
        ]),
    );
    job.insert(s("metadata"), Value::Mapping(metadata));
    let (context, deploy, boot) = match &opts.boot {
        BootMethod::Qemu => qemu(built, opts)?,
        BootMethod::Minimal => minimal(built, opts)?,
        BootMethod::Bootloader { method, commands } => bootloader(built, opts, method, commands),
    };
    if let Some(context) = context {
        job.insert(s("context"), context);
    }
    let deploy = with(deploy, "timeout", seconds(DEPLOY_TIMEOUT));
    let boot = with(boot, "timeout", seconds(boot_timeout));
    let test = map([
        ("timeout", seconds(test_timeout)),
        ("monitors", Value::Sequence(vec![monitor(built)])),
    ]);
    job.insert(
        s("actions"),
        Value::Sequence(vec![
            map([("deploy", deploy)]),
            map([("boot", boot)]),
            map([("test", test)]),
        ]),
    );
    Ok(Value::Mapping(job))
}

/// The monitor: one LAVA test case per VM, named for it (LAVA lowercases
/// it and turns other characters than letters, digits and `_` into `_`),
/// from its end line: `pass` for `state=exited` with code 0 or none, `fail`
/// for another code or `state=failed`. The result group captures a fixed
/// text for each (mapped by `fixupdict`), and each alternative needs the
/// line's end or the code's first digit, so a line LAVA reads half-way is
/// never taken for a pass.
pub fn monitor(built: &Built) -> Value {
    let names: Vec<String> = built
        .manifest
        .vms
        .iter()
        .map(|v| regex::escape(&v.name))
        .collect();
    let pattern = format!(
        r"kiln: vm=(?P<test_case_id>{}) state=(?P<result>exited code=0(?=\r|\n)|exited code=(?=-|[1-9])|exited(?=\r|\n)|failed)",
        names.join("|")
    );
    let mut fixup = Mapping::new();
    for (k, v) in [
        ("exited code=0", "pass"),
        ("exited code=", "fail"),
        ("exited", "pass"),
        ("failed", "fail"),
    ] {
        fixup.insert(s(k), s(v));
    }
    map([
        ("name", s(monitor_name(&built.manifest.name))),
        ("start", s(MONITOR_START)),
        ("end", s(MONITOR_END)),
        ("pattern", s(pattern)),
        ("fixupdict", Value::Mapping(fixup)),
    ])
}

/// `kiln-<image>`, in the characters LAVA allows in a monitor's name.
pub fn monitor_name(image: &str) -> String {
    let clean: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("kiln-{clean}")
}

type Actions = (Option<Value>, Value, Value);

/// QEMU device types: the emulated target's machine in the job context
/// (which LAVA renders into the device's QEMU command), the kernel and
/// initramfs given to QEMU from tmpfs.
fn qemu(built: &Built, opts: &JobOptions) -> Result<Actions, LavaJobError> {
    let target = built.manifest.target.clone().unwrap_or_default();
    let shape = Shape::of(&target, opts.accel);
    let mut extra = vec![
        format!("-machine {}", shape.machine),
        format!("-cpu {}", shape.cpu),
        format!("-smp {}", shape.smp),
        "-vga none".to_string(),
        "-no-reboot".to_string(),
    ];
    extra.extend(
        shape
            .devices
            .iter()
            .map(|d| format!("-device {}", quote(d))),
    );
    extra.extend(shape.extra.iter().map(|a| quote(a)));
    let mut context = vec![
        ("arch", s("amd64")),
        ("memory", Value::Number(shape.memory_mib.into())),
        (
            "extra_options",
            Value::Sequence(extra.into_iter().map(Value::String).collect()),
        ),
    ];
    if opts.accel == Accel::Tcg {
        // The qemu device type adds `-cpu host -enable-kvm` unless told not to.
        context.push(("no_kvm", Value::Bool(true)));
    }
    let cmdline = target_cmdline(&built.files.cmdline, opts.accel);
    let kernel = with(
        artifact(built, opts, "vmlinuz"),
        "image_arg",
        s(format!("-kernel {{kernel}} -append {}", quote(&cmdline))),
    );
    let ramdisk = with(
        artifact(built, opts, &built.initrd_name()),
        "image_arg",
        s("-initrd {ramdisk}"),
    );
    let deploy = map([
        ("to", s("tmpfs")),
        ("images", map([("kernel", kernel), ("ramdisk", ramdisk)])),
    ]);
    let boot = map([("method", s("qemu")), ("media", s("tmpfs"))]);
    Ok((Some(map_of(context)), deploy, boot))
}

/// A board that boots its disk: the disk image written by the device's
/// flasher (`flasher_deploy_commands`, with `{IMAGE}`), then power on.
fn minimal(built: &Built, opts: &JobOptions) -> Result<Actions, LavaJobError> {
    if !built.has(DISK) {
        return Err(LavaJobError::NoDisk {
            dir: built.dir.clone(),
        });
    }
    let deploy = map([
        ("to", s("flasher")),
        ("images", map([("image", artifact(built, opts, DISK))])),
    ]);
    let boot = map([("method", s("minimal"))]);
    Ok((None, deploy, boot))
}

/// A bootloader method: kernel and initramfs over TFTP, the image's
/// command line through the device type's `extra_kernel_args`.
fn bootloader(built: &Built, opts: &JobOptions, method: &str, commands: &str) -> Actions {
    let ramdisk = with(
        with(
            artifact(built, opts, &built.initrd_name()),
            "install_modules",
            Value::Bool(false),
        ),
        "install_overlay",
        Value::Bool(false),
    );
    let deploy = map([
        ("to", s("tftp")),
        ("kernel", artifact(built, opts, "vmlinuz")),
        ("ramdisk", ramdisk),
    ]);
    let boot = map([("method", s(method)), ("commands", s(commands))]);
    let context = map([("extra_kernel_args", s(&built.files.cmdline))]);
    (Some(context), deploy, boot)
}

/// `url` (and `sha256sum` when the manifest has it) of an image file.
fn artifact(built: &Built, opts: &JobOptions, file: &str) -> Value {
    let url = match &opts.artifacts {
        Some(base) if base.ends_with('/') => format!("{base}{file}"),
        Some(base) => format!("{base}/{file}"),
        None => format!("file://{}", built.dir.join(file).display()),
    };
    let mut m = vec![("url", s(url))];
    if let Some(h) = built.sha256(file) {
        m.push(("sha256sum", s(h)));
    }
    map_of(m)
}

/// One argument of a command line LAVA splits like a shell (pexpect's
/// splitter): as it is when that is safe, else in single quotes.
pub fn quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=,.:/@%+".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn s(text: impl Into<String>) -> Value {
    Value::String(text.into())
}

fn seconds(d: Duration) -> Value {
    map([("seconds", Value::Number(d.as_secs().max(1).into()))])
}

fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    map_of(pairs.into_iter().collect())
}

fn map_of(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

fn with(mut value: Value, key: &str, item: Value) -> Value {
    if let Value::Mapping(m) = &mut value {
        m.insert(s(key), item);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::built::tests::fake_built;

    fn opts(boot: BootMethod) -> JobOptions {
        JobOptions {
            device_type: "qemu".into(),
            boot,
            artifacts: None,
            accel: Accel::Tcg,
            job_name: None,
            boot_timeout: None,
        }
    }

    fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
        path.iter().fold(v, |v, k| match k.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[*k],
        })
    }

    fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
        get(v, path)
            .as_str()
            .unwrap_or_else(|| panic!("{path:?}: {v:?}"))
    }

    #[test]
    fn a_qemu_job_boots_the_emulated_target_and_monitors_each_vm() {
        let d = tempfile::tempdir().unwrap();
        let dir = fake_built(
            d.path(),
            serde_json::json!([{"name": "edu-a", "test": {"timeout": "300s"}}, {"name": "b"}]),
        );
        let built = Built::load(&dir).unwrap();
        let job = job(&built, &opts(BootMethod::Qemu)).unwrap();
        assert_eq!(text(&job, &["device_type"]), "qemu");
        assert_eq!(text(&job, &["job_name"]), "kiln img");
        assert_eq!(text(&job, &["metadata", "kiln.image.digest"]), "sha256:bb");
        let extra: Vec<&str> = get(&job, &["context", "extra_options"])
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            extra,
            [
                "-machine q35,accel=tcg",
                "-cpu max",
                "-smp 2",
                "-vga none",
                "-no-reboot",
                "-device intel-iommu,intremap=on,caching-mode=on",
                "-device edu",
                "-s"
            ]
        );
        assert_eq!(get(&job, &["context", "memory"]).as_u64(), Some(1024));
        assert_eq!(get(&job, &["context", "no_kvm"]).as_bool(), Some(true));
        let kernel = get(&job, &["actions", "0", "deploy", "images", "kernel"]);
        assert_eq!(
            text(kernel, &["image_arg"]),
            "-kernel {kernel} -append 'console=ttyS0 panic=-1 quiet no_timer_check'"
        );
        assert_eq!(
            text(kernel, &["url"]),
            format!("file://{}/vmlinuz", built.dir.display())
        );
        assert_eq!(text(kernel, &["sha256sum"]), "aa");
        assert_eq!(text(&job, &["actions", "1", "boot", "method"]), "qemu");
        // Boot timeout, the longest VM's, and the grace for `done`; the
        // monitor waits as long for a line.
        assert_eq!(
            get(&job, &["actions", "2", "test", "timeout", "seconds"]).as_u64(),
            Some(120 + 300 + 5)
        );
        assert_eq!(
            get(&job, &["timeouts", "connection", "seconds"]).as_u64(),
            Some(120 + 300 + 5)
        );
        let mon = get(&job, &["actions", "2", "test", "monitors", "0"]);
        assert_eq!(text(mon, &["name"]), "kiln-img");
        assert!(
            text(mon, &["pattern"]).starts_with(r"kiln: vm=(?P<test_case_id>edu\-a|b) state="),
            "{mon:?}"
        );
        assert_eq!(text(mon, &["fixupdict", "exited code="]), "fail");
    }

    #[test]
    fn kvm_jobs_keep_the_device_types_kvm() {
        let d = tempfile::tempdir().unwrap();
        let built = Built::load(&fake_built(d.path(), serde_json::json!([{"name": "a"}]))).unwrap();
        let mut o = opts(BootMethod::Qemu);
        o.accel = Accel::Kvm;
        let job = job(&built, &o).unwrap();
        assert!(get(&job, &["context", "no_kvm"]).is_null());
        assert_eq!(
            text(&job, &["context", "extra_options", "0"]),
            "-machine q35,accel=kvm,kernel-irqchip=split"
        );
        let arg = text(
            &job,
            &["actions", "0", "deploy", "images", "kernel", "image_arg"],
        );
        assert!(!arg.contains("no_timer_check"), "{arg}");
    }

    #[test]
    fn boards_get_their_disk_or_a_bootloader() {
        let d = tempfile::tempdir().unwrap();
        let dir = fake_built(d.path(), serde_json::json!([{"name": "a"}]));
        let built = Built::load(&dir).unwrap();
        let mut o = opts(BootMethod::parse(None, "x86", None));
        o.device_type = "x86".into();
        o.artifacts = Some("https://lab.example/kiln/img".into());
        let e = job(&built, &o).unwrap_err().to_string();
        assert!(e.contains("has no disk.img; add \"disk\""), "{e}");
        std::fs::write(dir.join(DISK), b"gpt").unwrap();
        let built = Built::load(&dir).unwrap();
        let job_ = job(&built, &o).unwrap();
        assert_eq!(text(&job_, &["actions", "0", "deploy", "to"]), "flasher");
        assert_eq!(
            text(&job_, &["actions", "0", "deploy", "images", "image", "url"]),
            "https://lab.example/kiln/img/disk.img"
        );
        assert_eq!(text(&job_, &["actions", "1", "boot", "method"]), "minimal");
        assert!(get(&job_, &["context"]).is_null());

        o.boot = BootMethod::parse(Some("ipxe"), "x86", None);
        let job_ = job(&built, &o).unwrap();
        assert_eq!(text(&job_, &["actions", "0", "deploy", "to"]), "tftp");
        assert_eq!(
            text(&job_, &["actions", "0", "deploy", "ramdisk", "url"]),
            "https://lab.example/kiln/img/initramfs.cpio.zst"
        );
        assert_eq!(
            text(&job_, &["actions", "1", "boot", "commands"]),
            "ramdisk"
        );
        assert_eq!(
            text(&job_, &["context", "extra_kernel_args"]),
            "console=ttyS0 panic=-1 quiet"
        );
    }

    #[test]
    fn the_written_job_is_yaml_with_a_header() {
        let d = tempfile::tempdir().unwrap();
        let built = Built::load(&fake_built(d.path(), serde_json::json!([{"name": "a"}]))).unwrap();
        let text = write(&built, &opts(BootMethod::Qemu)).unwrap();
        assert!(text.starts_with("# LAVA job for the kiln image img (sha256:bb)"));
        assert!(text.contains("--target replay:output.yaml"));
        let back: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, job(&built, &opts(BootMethod::Qemu)).unwrap());
    }

    #[test]
    fn arguments_are_quoted_for_a_shell_like_splitter() {
        assert_eq!(quote("edu,dma_mask=0xff"), "edu,dma_mask=0xff");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(monitor_name("my image"), "kiln-my_image");
    }
}
