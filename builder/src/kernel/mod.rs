//! TODO(skeleton): placeholder API; the kernel branch replaces this file.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("kernel")]
pub struct KernelError;

pub enum KernelSource {
    Debian(String),
    Host,
    Path {
        bzimage: PathBuf,
        modules_dir: Option<PathBuf>,
        config: Option<PathBuf>,
    },
}

impl KernelSource {
    pub fn parse(_: &str, _: Option<PathBuf>, _: Option<PathBuf>) -> Result<Self, KernelError> {
        Ok(KernelSource::Host)
    }
}

pub struct KernelConfig;
impl KernelConfig {
    pub fn is_enabled(&self, _: &str) -> bool {
        true
    }
}

pub struct KernelOrigin;
impl KernelOrigin {
    pub fn package_name(&self) -> Option<&str> {
        None
    }
    pub fn package_version(&self) -> Option<&str> {
        None
    }
}

pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub config: Option<KernelConfig>,
    pub modules_dir: Option<PathBuf>,
    pub origin: KernelOrigin,
}

pub fn resolve(_: &KernelSource) -> Result<Kernel, KernelError> {
    Err(KernelError)
}

pub fn module_index(_: &Kernel) -> Result<kiln_runtime::kmod::ModuleIndex, KernelError> {
    Err(KernelError)
}

pub fn cache_dir() -> Result<PathBuf, KernelError> {
    Err(KernelError)
}
