//! Counting online CPUs from the kernel's CPU list format ("0-3,5").

use std::path::{Path, PathBuf};

/// The kernel's list of online CPUs.
pub const ONLINE_PATH: &str = "/sys/devices/system/cpu/online";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the online CPU list from {path}; is /sys mounted?")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CPU list {list:?} is not in the kernel's \"0-3,5\" format")]
    BadList { list: String },
}

/// The number of CPUs in a list like "0-3,5" (ranges inclusive; empty = 0).
pub fn count(list: &str) -> Option<u32> {
    let list = list.trim();
    if list.is_empty() {
        return Some(0);
    }
    list.split(',').try_fold(0u32, |total, part| {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let cpu = part.parse::<u32>().ok()?;
                (cpu, cpu)
            }
        };
        let n = last.checked_sub(first)?.checked_add(1)?;
        total.checked_add(n)
    })
}

/// The number of online CPUs listed in the file at `path`.
pub fn online(path: &Path) -> Result<u32, Error> {
    let list = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    count(&list).ok_or_else(|| Error::BadList {
        list: list.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ranges_and_single_cpus() {
        assert_eq!(count("0\n"), Some(1));
        assert_eq!(count("0-1\n"), Some(2));
        assert_eq!(count("0-3,5"), Some(5));
        assert_eq!(count("0,2,4-7,9-9"), Some(7));
        assert_eq!(count(""), Some(0));
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in ["3-1", "0-", "-1", "a", "0,,1", "0-1-2", "1 2"] {
            assert_eq!(count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_the_list_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online");
        std::fs::write(&path, "0-1\n").unwrap();
        assert_eq!(online(&path).unwrap(), 2);
        std::fs::write(&path, "zero\n").unwrap();
        assert!(matches!(online(&path), Err(Error::BadList { list }) if list == "zero"));
        assert!(matches!(
            online(&dir.path().join("absent")),
            Err(Error::Read { .. })
        ));
    }
}
