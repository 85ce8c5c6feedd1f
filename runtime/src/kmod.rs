//! TODO(skeleton): placeholder API; the kernel branch replaces this file.

#[derive(Debug, thiserror::Error)]
#[error("kmod")]
pub struct KmodError;

pub struct ModuleEntry {
    pub name: String,
    pub path: String,
}

pub struct ModuleIndex;

impl ModuleIndex {
    pub fn from_modules_dep(_: &str, _: Option<&str>, _: Option<&str>) -> Result<Self, KmodError> {
        Ok(ModuleIndex)
    }
    pub fn closure(&self, _: &[&str]) -> Result<Vec<ModuleEntry>, KmodError> {
        Ok(Vec::new())
    }
    pub fn to_modules_dep(&self, _: &[ModuleEntry]) -> String {
        String::new()
    }
}
