//! What the firmware and the TPM say about this boot, printed once on the
//! console so a lab or `kiln test` can check it:
//!
//! ```text
//! kiln: firmware: uefi secure_boot=enabled lockdown=integrity
//! kiln: firmware: tpm pcr11.sha256=<64 hex digits>
//! ```
//!
//! `secure_boot` is the UEFI `SecureBoot` variable (enabled, disabled, or
//! unsupported when the firmware has none; unknown without efivarfs);
//! `lockdown` is the kernel's lockdown mode, which Debian's kernel enters
//! under Secure Boot. PCR 11 is what systemd-stub measured the UKI into,
//! for comparison with the `kiln.pcrs.json` of the build. PID 1 extends no
//! PCR itself. Nothing is printed on a machine booted without UEFI (QEMU's
//! direct kernel boot), and no TPM line without a TPM.

use nix::mount::{mount, MsFlags};
use std::path::Path;

const EFI: &str = "/sys/firmware/efi";
const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// The global variable GUID (UEFI 2.10, 3.3).
const SECURE_BOOT: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
const SECURITYFS: &str = "/sys/kernel/security";
const PCR11: &str = "/sys/class/tpm/tpm0/pcr-sha256/11";

/// Whether module `name` is pointless here and is skipped, not an error:
/// efivarfs refuses to load on a machine booted without UEFI.
pub fn skip_module(name: &str) -> bool {
    name == "efivarfs" && !Path::new(EFI).is_dir()
}

/// Prints the firmware's lines; call after the appliance's modules loaded
/// (efivarfs may be one).
pub fn report() {
    if !Path::new(EFI).is_dir() {
        return;
    }
    let secure_boot = match mount_once("efivarfs", EFIVARS) {
        Ok(()) => secure_boot_state(std::fs::read(Path::new(EFIVARS).join(SECURE_BOOT))),
        Err(e) => {
            super::say(&format!(
                "warning: cannot mount efivarfs ({e}); the Secure Boot state is unknown (load the efivarfs module)"
            ));
            "unknown"
        }
    };
    let lockdown = match mount_once("securityfs", SECURITYFS) {
        Ok(()) => std::fs::read_to_string(Path::new(SECURITYFS).join("lockdown"))
            .ok()
            .and_then(|t| lockdown_mode(&t))
            .unwrap_or_else(|| "unknown".into()),
        Err(_) => "unknown".into(),
    };
    super::say(&format!(
        "firmware: uefi secure_boot={secure_boot} lockdown={lockdown}"
    ));
    if let Ok(text) = std::fs::read_to_string(PCR11) {
        match pcr_hex(&text) {
            Some(hex) => super::say(&format!("firmware: tpm pcr11.sha256={hex}")),
            None => super::say(&format!(
                "warning: {PCR11} holds no SHA-256 value: {:?}",
                text.trim()
            )),
        }
    }
}

/// Mounts a kernel filesystem; one that is already there (EBUSY) is fine.
fn mount_once(fstype: &str, target: &str) -> nix::Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some(fstype), target, Some(fstype), flags, None::<&str>) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The `SecureBoot` variable as efivarfs gives it: 4 bytes of attributes,
/// then one byte, 1 when Secure Boot is enforced.
fn secure_boot_state(var: std::io::Result<Vec<u8>>) -> &'static str {
    match var {
        Ok(bytes) => match bytes.get(4) {
            Some(1) => "enabled",
            Some(0) => "disabled",
            _ => "unknown",
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "unsupported",
        Err(_) => "unknown",
    }
}

/// The active mode of `/sys/kernel/security/lockdown`, the bracketed word
/// of e.g. `none [integrity] confidentiality`.
fn lockdown_mode(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let len = text.get(start..)?.find(']')?;
    Some(text.get(start..start + len)?.to_string())
}

/// A PCR value from sysfs (upper-case hex) as 64 lower-case hex digits.
fn pcr_hex(text: &str) -> Option<String> {
    let t = text.trim();
    (t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_boot_variable() {
        assert_eq!(secure_boot_state(Ok(vec![6, 0, 0, 0, 1])), "enabled");
        assert_eq!(secure_boot_state(Ok(vec![6, 0, 0, 0, 0])), "disabled");
        assert_eq!(secure_boot_state(Ok(vec![6, 0, 0, 0])), "unknown");
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(secure_boot_state(Err(missing)), "unsupported");
    }

    #[test]
    fn lockdown_and_pcr_text() {
        assert_eq!(
            lockdown_mode("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            lockdown_mode("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(lockdown_mode("none"), None);
        let upper = "5060C6755A9A35480553BE4122E28A30BE3D32CBFAADE4459EF8998D556923B7\n";
        assert_eq!(
            pcr_hex(upper).as_deref(),
            Some(upper.trim().to_ascii_lowercase().as_str())
        );
        assert_eq!(pcr_hex("00"), None);
        assert_eq!(pcr_hex(&"g".repeat(64)), None);
    }
}
