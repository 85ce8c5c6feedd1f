//! A kernel's build configuration (`/boot/config-<release>`), to check that
//! what an image needs (KVM, VFIO, an initrd decompressor) is in the kernel.

use std::collections::BTreeMap;

/// The symbols of a kernel `.config`. Symbols are looked up with or without
/// the `CONFIG_` prefix; `# CONFIG_X is not set` reads as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// Symbol without `CONFIG_` → value with string quotes removed.
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Reads the `CONFIG_X=value` lines of a `.config`. Comments, blank
    /// lines and anything else are ignored, as Kconfig itself does.
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|line| {
                let (key, value) = line.trim().split_once('=')?;
                let sym = key.strip_prefix("CONFIG_")?;
                if sym.is_empty() || sym.contains(char::is_whitespace) {
                    return None;
                }
                Some((sym.to_string(), unquote(value.trim()).to_string()))
            })
            .collect();
        KernelConfig { values }
    }

    /// The value of `sym` (`y`, `m`, a number or a string without its
    /// quotes), or `None` when it is not set.
    pub fn get(&self, sym: &str) -> Option<&str> {
        let sym = sym.strip_prefix("CONFIG_").unwrap_or(sym);
        self.values.get(sym).map(String::as_str)
    }

    /// Built in (`y`) or available as a module (`m`).
    pub fn is_enabled(&self, sym: &str) -> bool {
        matches!(self.get(sym), Some("y" | "m"))
    }

    /// Built into the kernel image (`y`).
    pub fn is_builtin(&self, sym: &str) -> bool {
        self.get(sym) == Some("y")
    }

    /// Available as a loadable module (`m`).
    pub fn is_module(&self, sym: &str) -> bool {
        self.get(sym) == Some("m")
    }
}

/// `"text"` → `text`; Kconfig escapes `"` and `\` with a backslash.
fn unquote(value: &str) -> std::borrow::Cow<'_, str> {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if inner.contains('\\') => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out.into()
        }
        Some(inner) => inner.into(),
        None => value.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.1.0 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14) 12.2.0"
CONFIG_KVM=m
CONFIG_KVM_VFIO=y
# CONFIG_VFIO_NOIOMMU is not set
CONFIG_LOG_BUF_SHIFT=17
CONFIG_LOCALVERSION=""
CONFIG_CMDLINE="say \"hi\""
"#;

    #[test]
    fn reads_values_and_states() {
        let c = KernelConfig::parse(TEXT);
        assert_eq!(c.get("KVM"), Some("m"));
        assert_eq!(c.get("CONFIG_KVM"), Some("m"));
        assert_eq!(c.get("LOG_BUF_SHIFT"), Some("17"));
        assert_eq!(
            c.get("CC_VERSION_TEXT"),
            Some("gcc-12 (Debian 12.2.0-14) 12.2.0")
        );
        assert_eq!(c.get("LOCALVERSION"), Some(""));
        assert_eq!(c.get("CMDLINE"), Some("say \"hi\""));
        assert_eq!(c.get("VFIO_NOIOMMU"), None);
        assert_eq!(c.get("NOT_THERE"), None);

        assert!(c.is_enabled("KVM") && c.is_module("KVM") && !c.is_builtin("KVM"));
        assert!(c.is_enabled("KVM_VFIO") && c.is_builtin("CONFIG_KVM_VFIO"));
        assert!(!c.is_enabled("VFIO_NOIOMMU") && !c.is_builtin("VFIO_NOIOMMU"));
        assert!(!c.is_enabled("LOG_BUF_SHIFT"));
    }
}
