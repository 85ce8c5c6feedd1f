//! The emulated target: QEMU q35 with an Intel IOMMU and a CPU that offers
//! AMD-V (`-cpu max` under TCG), booting an image's kernel and initramfs.

use crate::image::TargetSection;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const QEMU: &str = "qemu-system-x86_64";

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{QEMU} is not installed; install it with `apt-get install -y qemu-system-x86` (Debian/Ubuntu)")]
    Missing,
    #[error("{} is not a built image: {} is missing; build it with `kiln build`", dir.display(), file)]
    NotAnImage { dir: PathBuf, file: String },
    #[error("Cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How QEMU executes the target's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere, and `-cpu max` gives AMD-V.
    Tcg,
    /// Hardware virtualization: needs VT-x or AMD-V on this host.
    Kvm,
}

impl Accel {
    /// KVM only where the host CPU really has VT-x/AMD-V (a software KVM,
    /// such as kvm_pvm, cannot run a stock kernel), else TCG.
    pub fn detect() -> Accel {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if hw && Path::new("/dev/kvm").exists() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// Finds QEMU on PATH.
pub fn find() -> Result<PathBuf, QemuError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(QEMU))
        .find(|p| p.is_file())
        .ok_or(QemuError::Missing)
}

/// The files of a built image that QEMU boots.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

impl BootFiles {
    pub fn from_dir(dir: &Path) -> Result<Self, QemuError> {
        let missing = |file: &str| QemuError::NotAnImage {
            dir: dir.to_path_buf(),
            file: file.to_string(),
        };
        let kernel = dir.join("vmlinuz");
        if !kernel.is_file() {
            return Err(missing("vmlinuz"));
        }
        let initrd = std::fs::read_dir(dir)
            .map_err(|source| QemuError::Read {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("initramfs.cpio"))
            })
            .min()
            .ok_or_else(|| missing("initramfs.cpio.*"))?;
        let cmdline_path = dir.join("cmdline");
        let cmdline = std::fs::read_to_string(&cmdline_path)
            .map_err(|source| QemuError::Read {
                path: cmdline_path,
                source,
            })?
            .trim()
            .to_string();
        Ok(BootFiles {
            kernel,
            initrd,
            cmdline,
        })
    }
}

/// The emulated machine an image boots on, apart from its console and boot
/// files: what `kiln run`/`kiln test`, a LAVA job (`kiln lava-job`) and a
/// labgrid environment (`kiln labgrid-env`) give QEMU alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// `-machine`: q35 and the accelerator.
    pub machine: String,
    /// `-cpu`: `max`, which offers AMD-V under TCG.
    pub cpu: &'static str,
    pub memory_mib: u64,
    pub smp: u8,
    /// `-device` values: the Intel IOMMU first, then the image's devices.
    pub devices: Vec<String>,
    /// The image's extra QEMU arguments (`[target] qemu_args`), last.
    pub extra: Vec<String>,
}

/// The Intel IOMMU with interrupt remapping the runtime's VFIO needs.
pub const IOMMU_DEVICE: &str = "intel-iommu,intremap=on,caching-mode=on";

impl Shape {
    pub fn of(target: &TargetSection, accel: Accel) -> Shape {
        let machine = match accel {
            // The Intel IOMMU with interrupt remapping needs a split irqchip under KVM.
            Accel::Kvm => "q35,accel=kvm,kernel-irqchip=split",
            Accel::Tcg => "q35,accel=tcg",
        };
        let mut devices = vec![IOMMU_DEVICE.to_string()];
        devices.extend(target.devices.iter().cloned());
        Shape {
            machine: machine.to_string(),
            cpu: "max",
            memory_mib: target.memory.bytes() >> 20,
            smp: target.smp,
            devices,
            extra: target.qemu_args.clone(),
        }
    }
}

/// The QEMU command line for booting `files` on `target`. The console is
/// QEMU's stdio; Ctrl-C there stops QEMU (`signal=on`).
pub fn command(qemu: &Path, files: &BootFiles, target: &TargetSection, accel: Accel) -> Command {
    let mut cmd = Command::new(qemu);
    let shape = Shape::of(target, accel);
    cmd.args(["-machine", &shape.machine, "-cpu", shape.cpu])
        .args(["-m", &format!("{}M", shape.memory_mib)])
        .args(["-smp", &shape.smp.to_string()])
        .args([
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .args([
            "-chardev",
            "stdio,id=console,signal=on",
            "-serial",
            "chardev:console",
        ]);
    for dev in &shape.devices {
        cmd.args(["-device", dev]);
    }
    cmd.arg("-kernel").arg(&files.kernel);
    cmd.arg("-initrd").arg(&files.initrd);
    cmd.args(["-append", &target_cmdline(&files.cmdline, accel)]);
    cmd.args(&shape.extra);
    cmd
}

/// The kernel command line the emulated target boots with: the image's, plus
/// `no_timer_check` under TCG. A software-emulated CPU on a loaded host can
/// miss the kernel's early check that the timer interrupt arrives through the
/// interrupt-remapped IO-APIC, and the kernel then panics before kiln starts
/// ("timer doesn't work through Interrupt-remapped IO-APIC"); the check proves
/// nothing about an emulated board.
pub fn target_cmdline(image_cmdline: &str, accel: Accel) -> String {
    let tcg = matches!(accel, Accel::Tcg);
    if tcg
        && !image_cmdline
            .split_whitespace()
            .any(|w| w == "no_timer_check")
    {
        format!("{image_cmdline} no_timer_check")
    } else {
        image_cmdline.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_has_the_target_shape() {
        let files = BootFiles {
            kernel: "/o/vmlinuz".into(),
            initrd: "/o/initramfs.cpio.zst".into(),
            cmdline: "console=ttyS0".into(),
        };
        let target = TargetSection {
            devices: vec!["edu".into()],
            ..Default::default()
        };
        let cmd = command(
            Path::new("/usr/bin/qemu-system-x86_64"),
            &files,
            &target,
            Accel::Tcg,
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("-machine q35,accel=tcg -cpu max -m 2048M -smp 1"),
            "{joined}"
        );
        assert!(
            joined.contains("-device intel-iommu,intremap=on,caching-mode=on -device edu"),
            "{joined}"
        );
        assert!(
            joined.ends_with(
                "-kernel /o/vmlinuz -initrd /o/initramfs.cpio.zst -append console=ttyS0 no_timer_check"
            ),
            "{joined}"
        );
    }

    #[test]
    fn only_the_software_target_skips_the_timer_check() {
        assert_eq!(
            target_cmdline("console=ttyS0", Accel::Tcg),
            "console=ttyS0 no_timer_check"
        );
        assert_eq!(
            target_cmdline("console=ttyS0 no_timer_check", Accel::Tcg),
            "console=ttyS0 no_timer_check"
        );
        assert_eq!(target_cmdline("console=ttyS0", Accel::Kvm), "console=ttyS0");
    }

    #[test]
    fn an_unbuilt_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = BootFiles::from_dir(d.path()).err().unwrap().to_string();
        assert!(
            e.contains("vmlinuz is missing; build it with `kiln build`"),
            "{e}"
        );
    }
}
