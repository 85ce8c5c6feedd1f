//! End to end: Secure Boot and measured boot on a UEFI machine with Secure
//! Boot enforced and a TPM (tests/lab/secure-boot-qemu: OVMF's Secure Boot
//! firmware with SMM, a variable store enrolled with a test key set by
//! virt-firmware's `virt-fw-vars`, and swtpm).
//!
//! - `kiln keys` makes the owner's keys; `[output.signing]` signs the
//!   appliance, and a rebuild gives the same signed bytes.
//! - The signed `disk.img` boots: the appliance reports Secure Boot enabled
//!   and the kernel in lockdown, loads its (Debian-signed) modules, runs a
//!   VM under KVM and another driving an assigned edu through VFIO.
//! - The live PCR 11 is the one the build predicted in `kiln.pcrs.json`; a
//!   changed command line changes both.
//! - The same image unsigned, signed with another key, or with one byte of
//!   its UKI changed is refused by the firmware, and `kiln test` reports a
//!   boot error (exit 2, `boot-refused`).

// Test code: a failed step stops the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::images;
use kiln_tests::{kiln, require_qemu, root, run_kiln, run_with_timeout};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The virt-firmware release the test enrolls keys with (from PyPI, in a
/// virtualenv of its own).
const VIRT_FIRMWARE: &str = "26.10";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const EDU: &str = "edu,dma_mask=0xffffffffffffffff";

fn require(cmd: &str, package: &str) {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(cmd).is_file());
    assert!(
        found,
        "{cmd} is missing: run tests/setup (apt-get install -y {package})"
    );
}

/// `virt-fw-vars` from a virtualenv under the cargo target directory,
/// made on first use.
fn virt_fw_vars() -> PathBuf {
    let venv =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("virt-firmware-{VIRT_FIRMWARE}"));
    let bin = venv.join("bin/virt-fw-vars");
    if !bin.is_file() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs")
            .success();
        assert!(ok, "python3 -m venv failed: run tests/setup (python3-venv)");
        let ok = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                &format!("virt-firmware=={VIRT_FIRMWARE}"),
            ])
            .status()
            .expect("pip runs")
            .success();
        assert!(ok, "pip install virt-firmware=={VIRT_FIRMWARE} failed");
    }
    bin
}

/// An OVMF variable store with `keys`' PK, KEK and db enrolled and Secure
/// Boot on.
fn enrolled_vars(keys: &Path, out: &Path) {
    let guid = std::fs::read_to_string(keys.join("owner.guid")).expect("owner.guid");
    let guid = guid.trim();
    let cert = |name: &str| keys.join(format!("{name}.crt"));
    let o = Command::new(virt_fw_vars())
        .arg("--input")
        .arg(OVMF_VARS)
        .arg("--output")
        .arg(out)
        .args(["--set-pk", guid])
        .arg(cert("PK"))
        .args(["--add-kek", guid])
        .arg(cert("KEK"))
        .args(["--add-db", guid])
        .arg(cert("db"))
        .arg("--sb")
        .output()
        .expect("virt-fw-vars runs");
    assert!(
        o.status.success(),
        "virt-fw-vars failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn kiln_keys(dir: &Path, name: &str) {
    let o = run_kiln(&root(), &["keys", &dir.to_string_lossy(), "--name", name]);
    assert!(
        o.status.success(),
        "kiln keys failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The appliance: a hello VM under KVM and a hello VM driving an edu
/// through VFIO, booted from disk.img; signed with `keys` when given.
fn image(dir: &Path, name: &str, cmdline_extra: &str, keys: Option<&Path>) -> PathBuf {
    let configs = root().join("configs");
    let signing = keys
        .map(|k| {
            format!(
                "signing = {{ key = \"{}\", cert = \"{}\" }}\n",
                k.join("db.key").display(),
                k.join("db.crt").display()
            )
        })
        .unwrap_or_default();
    images::write(
        dir,
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\n\
             vms = [\"{}\", \"{}\"]\n\
             [kernel]\n\
             source = \"debian:linux-image-cloud-amd64\"\n\
             cmdline = \"console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt{cmdline_extra}\"\n\
             [output]\n\
             formats = [\"initramfs\", \"uki\", \"disk\"]\n{signing}",
            configs.join("hello.toml").display(),
            configs.join("edu.toml").display(),
        ),
    )
}

/// What `kiln test` of an image on the Secure Boot lab said and wrote.
struct Tested {
    run: kiln_tests::Finished,
    junit: String,
    console: String,
}

impl Tested {
    fn code(&self) -> Option<i32> {
        self.run.code()
    }
}

/// `kiln test` of `out` on the Secure Boot lab with the variable store `vars`.
fn test_on_lab(out: &Path, vars: &Path, lab_dir: &Path) -> Tested {
    let lab = root().join("tests/lab/secure-boot-lab.toml");
    let junit = out.with_extension("junit.xml");
    let mut cmd = Command::new(kiln());
    cmd.arg("test")
        .arg(out)
        .arg("--target")
        .arg(&lab)
        .arg("--junit")
        .arg(&junit)
        .env("SECURE_BOOT_VARS", vars)
        .env("SECURE_BOOT_LAB_DIR", lab_dir)
        .env("SECURE_BOOT_DEVICES", EDU);
    let run = run_with_timeout(cmd, Duration::from_secs(900));
    assert!(!run.timed_out, "kiln test hung:\n{}", run.output);
    eprintln!(
        "kiln test {} on the Secure Boot lab: {:.1} s, exit {:?}",
        out.display(),
        run.elapsed.as_secs_f64(),
        run.code()
    );
    let read = |p: &Path| {
        std::fs::read(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| panic!("kiln test wrote no {}: {e}\n{}", p.display(), run.output))
    };
    let junit_text = read(&junit);
    let console = read(&PathBuf::from(format!("{}.console.log", junit.display())));
    Tested {
        run,
        junit: junit_text,
        console,
    }
}

fn predicted_pcr11(out: &Path) -> String {
    let text = std::fs::read_to_string(out.join("kiln.pcrs.json")).expect("kiln.pcrs.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("kiln.pcrs.json is JSON");
    assert_eq!(v["sha256"][0]["pcr"], 11, "{text}");
    v["sha256"][0]["hash"]
        .as_str()
        .expect("a sha256 hash")
        .to_string()
}

fn live_pcr11(console: &str) -> String {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix("kiln: firmware: tpm pcr11.sha256="))
        .unwrap_or_else(|| panic!("the appliance printed no PCR 11:\n{console}"))
        .to_string()
}

fn assert_passed(t: &Tested) {
    assert_eq!(
        t.code(),
        Some(0),
        "kiln test did not pass:\n{}\n{}",
        t.run.output,
        t.console
    );
    for want in [
        "kiln: firmware: uefi secure_boot=enabled lockdown=integrity",
        "kiln: vm=hello state=exited code=0",
        "hello: edu verdict pass",
        "kiln: appliance done ok=2 failed=0",
    ] {
        assert!(t.console.contains(want), "no `{want}`:\n{}", t.console);
    }
    // Every module loaded under lockdown: PID 1 reports a refusal otherwise.
    assert!(
        !t.console.contains("the kernel refused to load it"),
        "{}",
        t.console
    );
}

fn assert_refused(t: &Tested, what: &str) {
    assert_eq!(
        t.code(),
        Some(2),
        "{what}: kiln test did not report a boot error:\n{}\n{}",
        t.run.output,
        t.console
    );
    assert!(
        t.junit.contains("type=\"boot-refused\""),
        "{what}: not a refusal:\n{}",
        t.junit
    );
    assert!(
        !t.console.contains("kiln: vm="),
        "{what}: the appliance ran:\n{}",
        t.console
    );
}

#[test]
fn signed_appliance_boots_under_secure_boot_and_tampered_ones_are_refused() {
    require_qemu();
    for (cmd, package) in [
        ("swtpm", "swtpm"),
        ("osslsigncode", "osslsigncode"),
        ("sign-efi-sig-list", "efitools"),
        ("sbverify", "sbsigntool"),
        ("mcopy", "mtools"),
    ] {
        require(cmd, package);
    }
    assert!(
        Path::new(OVMF_CODE).is_file(),
        "{OVMF_CODE} is missing: run tests/setup (ovmf)"
    );
    let dir = images::scratch("secure-boot");
    let (k1, k2) = (dir.join("keys-owner"), dir.join("keys-other"));
    kiln_keys(&k1, "kiln test owner");
    kiln_keys(&k2, "kiln test other");

    // Signed builds are reproducible, record their signer, and sign the
    // disk's BOOTX64.EFI too.
    let signed = image(&dir, "signed", "", Some(&k1));
    let a = dir.join("a");
    let m = images::build(&signed, &a);
    let again = dir.join("a-again");
    images::build(&signed, &again);
    for file in ["kiln.efi", "disk.img", "kiln.pcrs.json"] {
        let (x, y) = (
            std::fs::read(a.join(file)).expect("first build"),
            std::fs::read(again.join(file)).expect("second build"),
        );
        assert!(x == y, "{file} differs between two signed builds");
    }
    let fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(k1.join("db.crt"))
        .output()
        .expect("openssl runs");
    let fp = String::from_utf8_lossy(&fp.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(
        m["uki"]["signer"]["cert_sha256"],
        fp.as_str(),
        "{}",
        m["uki"]
    );
    assert_eq!(m["uki"]["signer"]["subject"], "CN=kiln test owner db");
    assert_eq!(m["uki"]["pcr11"], predicted_pcr11(&a).as_str());
    let sbverify = |cert: &Path, efi: &Path| {
        Command::new("sbverify")
            .arg("--cert")
            .arg(cert)
            .arg(efi)
            .output()
            .expect("sbverify runs")
            .status
            .success()
    };
    let boot_efi = dir.join("BOOTX64.EFI");
    let o = Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@1M", a.join("disk.img").display()))
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .arg(&boot_efi)
        .output()
        .expect("mcopy runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&boot_efi).ok() == std::fs::read(a.join("kiln.efi")).ok(),
        "BOOTX64.EFI is not the signed kiln.efi"
    );
    assert!(sbverify(&k1.join("db.crt"), &boot_efi));
    assert!(!sbverify(&k2.join("db.crt"), &boot_efi));
    let o = run_kiln(&root(), &["inspect", &a.join("kiln.efi").to_string_lossy()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("signed:     yes, by CN=kiln test owner db"),
        "{text}"
    );

    // A changed command line: another prediction.
    let b = dir.join("b");
    images::build(&image(&dir, "signed-b", " kiln.test=pcr", Some(&k1)), &b);
    let (pa, pb) = (predicted_pcr11(&a), predicted_pcr11(&b));
    assert_ne!(pa, pb, "the command line is measured");

    // The firmware trusts k1 only.
    let vars = dir.join("vars-owner.fd");
    enrolled_vars(&k1, &vars);
    let lab = dir.join("lab");

    let t = test_on_lab(&a, &vars, &lab);
    assert_passed(&t);
    assert_eq!(live_pcr11(&t.console), pa, "PCR 11 of the signed image");
    let t = test_on_lab(&b, &vars, &lab);
    assert_passed(&t);
    assert_eq!(
        live_pcr11(&t.console),
        pb,
        "PCR 11 with the changed command line"
    );

    // Refused: unsigned, signed by a key db does not hold, changed by one byte.
    let unsigned = dir.join("unsigned");
    images::build(&image(&dir, "unsigned", "", None), &unsigned);
    assert_refused(&test_on_lab(&unsigned, &vars, &lab), "unsigned");
    let other = dir.join("other");
    images::build(&image(&dir, "other", "", Some(&k2)), &other);
    assert_refused(&test_on_lab(&other, &vars, &lab), "signed with another key");

    let tampered = dir.join("tampered");
    std::fs::create_dir_all(&tampered).expect("mkdir");
    for file in ["manifest.json", "vmlinuz", "initramfs.cpio.zst", "cmdline"] {
        std::fs::copy(a.join(file), tampered.join(file)).expect("copy");
    }
    let mut disk = std::fs::read(a.join("disk.img")).expect("disk.img");
    let cmdline = b"console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt";
    let at: Vec<usize> = disk
        .windows(cmdline.len())
        .enumerate()
        .filter(|(_, w)| *w == cmdline)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the UKI's .cmdline is once in disk.img");
    // `quiet` becomes `quieT`: one byte of the UKI's command line.
    disk[at[0] + 27] = b'T';
    std::fs::write(tampered.join("disk.img"), &disk).expect("write");
    assert_refused(&test_on_lab(&tampered, &vars, &lab), "one byte changed");
}
