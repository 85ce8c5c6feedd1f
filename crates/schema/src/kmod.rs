//! Kernel module dependency closure from `modules.dep`, `modules.softdep`
//! and `modules.builtin`.
//!
//! Shared by the builder (which modules go into the image, and the
//! `modules.dep` written next to them) and the runtime (which modules to
//! load, in which order). The runtime is PID 1, so nothing here panics and
//! nothing recurses on input-controlled depth: the walks use explicit stacks.
//!
//! Semantics follow kmod's `modprobe`:
//! - names are compared with `-` and `_` equal (`kvm-amd` is `kvm_amd`);
//! - a module's hard dependencies load before it;
//! - `softdep <m> pre: a b post: c` loads `a`, `b` before `m` and `c` after;
//!   soft dependencies that do not exist (or are built in) are skipped, and
//!   words before the first `pre:`/`post:` are ignored, as kmod does;
//! - built-in modules need no loading and are skipped;
//! - with [`ModuleIndex::with_aliases`], a name that is no module's but an
//!   exact alias (`crc32c`, `crypto-md5`) stands for the modules behind it,
//!   both in soft dependencies and in requested names.
//!
//! One deliberate difference: every `softdep` line of a module counts
//! (kmod 30 honours only the first), as the module's author meant.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

/// One module to load: its canonical name (underscores, as the kernel
/// names it in /sys/module) and its path relative to `/lib/modules/<rel>/`,
/// as written in `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub name: String,
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error(
        "Module \"{name}\" does not exist in this kernel{}",
        did_you_mean(suggestions)
    )]
    Unknown {
        name: String,
        suggestions: Vec<String>,
    },
    #[error(
        "Modules depend on each other in a cycle ({}); the kernel's module metadata is broken, regenerate modules.dep with depmod",
        cycle.join(" -> ")
    )]
    Cycle { cycle: Vec<String> },
    #[error("Cannot parse {file} line {line}: {reason}")]
    Malformed {
        file: &'static str,
        line: usize,
        reason: String,
    },
}

fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        [init @ .., last] => format!("; did you mean {} or {last}?", init.join(", ")),
    }
}

/// The canonical form of a module name: `-` replaced by `_`.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The canonical module name of a module file path such as
/// `kernel/arch/x86/kvm/kvm-amd.ko.xz` (`kvm_amd`), or `None` if the file
/// name is not a (possibly compressed) kernel module.
pub fn module_name_from_path(path: &str) -> Option<String> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    (!stem.is_empty()).then(|| normalize_name(stem))
}

/// Why modules.dep cannot name `path`: it is no module file, or it holds
/// whitespace or `:`, which separate modules.dep's fields (kiln writes the
/// paths it reads back into the image's modules.dep).
fn bad_path(path: &str) -> String {
    if path.contains(|c: char| c.is_whitespace() || c == ':') {
        format!("\"{path}\" has whitespace or ':' in it, which modules.dep cannot hold")
    } else {
        format!("\"{path}\" is not a kernel module file")
    }
}

#[derive(Debug, Clone)]
struct Module {
    name: String,
    path: String,
    /// Hard dependencies in `modules.dep` order (depmod lists them so that
    /// the last one loads first).
    deps: Vec<usize>,
    /// Soft dependencies, by canonical name; resolved when walking since
    /// they may name modules that do not exist.
    pre: Vec<String>,
    post: Vec<String>,
}

/// The modules of one kernel and how they depend on each other.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: Vec<Module>,
    by_name: HashMap<String, usize>,
    by_path: HashMap<String, usize>,
    builtin: BTreeSet<String>,
    /// Exact (wildcard-free) alias → modules, in the order listed.
    aliases: HashMap<String, Vec<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    InProgress,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Hard(usize),
    Soft(usize),
    Emit,
}

struct Frame {
    id: usize,
    steps: Vec<Step>,
    next: usize,
}

impl ModuleIndex {
    /// Builds the index from the texts of `modules.dep` and, optionally,
    /// `modules.softdep` and `modules.builtin`.
    ///
    /// `modules.dep` may list either every transitive dependency (as depmod
    /// writes it) or only direct ones. A name listed twice keeps its first
    /// line, as kmod does.
    pub fn from_modules_dep(
        dep: &str,
        softdep: Option<&str>,
        builtin: Option<&str>,
    ) -> Result<Self, KmodError> {
        let mut index = ModuleIndex::default();
        let mut lines = Vec::new();
        for (n, raw) in dep.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason: String| KmodError::Malformed {
                file: "modules.dep",
                line: n + 1,
                reason,
            };
            let (path, deps) = line
                .split_once(':')
                .ok_or_else(|| malformed("expected \"<module path>: <dependencies>\"".into()))?;
            let path = path.trim();
            let id = index.add(path).ok_or_else(|| malformed(bad_path(path)))?;
            lines.push((n + 1, id, deps));
        }
        let mut assigned = HashSet::new();
        for (line, id, deps) in lines {
            let mut ids = Vec::new();
            for dep_path in deps.split_whitespace() {
                // depmod always gives a dependency its own line; if one is
                // missing, the module still exists (with no known deps).
                let dep = index.add(dep_path).ok_or_else(|| KmodError::Malformed {
                    file: "modules.dep",
                    line,
                    reason: bad_path(dep_path),
                })?;
                ids.push(dep);
            }
            // Only the first line of a duplicated name counts.
            if assigned.insert(id) {
                if let Some(m) = index.modules.get_mut(id) {
                    m.deps = ids;
                }
            }
        }
        if let Some(text) = softdep {
            index.parse_softdep(text)?;
        }
        if let Some(text) = builtin {
            index.builtin = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .filter_map(module_name_from_path)
                .collect();
        }
        Ok(index)
    }

    /// Registers a module path and returns its id; an already known name
    /// returns the existing id. `None` for a path that is no module file,
    /// or that modules.dep cannot hold (see [`bad_path`]).
    fn add(&mut self, path: &str) -> Option<usize> {
        if path.contains(|c: char| c.is_whitespace() || c == ':') {
            return None;
        }
        if let Some(&id) = self.by_path.get(path) {
            return Some(id);
        }
        let name = module_name_from_path(path)?;
        let id = match self.by_name.get(&name) {
            Some(&id) => id,
            None => {
                let id = self.modules.len();
                self.modules.push(Module {
                    name: name.clone(),
                    path: path.to_string(),
                    deps: Vec::new(),
                    pre: Vec::new(),
                    post: Vec::new(),
                });
                self.by_name.insert(name, id);
                id
            }
        };
        self.by_path.insert(path.to_string(), id);
        Some(id)
    }

    fn parse_softdep(&mut self, text: &str) -> Result<(), KmodError> {
        for (n, raw) in text.lines().enumerate() {
            let mut words = raw.split_whitespace();
            if words.next() != Some("softdep") {
                continue; // comments, blank lines, other modprobe.d directives
            }
            let name = words.next().ok_or(KmodError::Malformed {
                file: "modules.softdep",
                line: n + 1,
                reason: "\"softdep\" names no module".into(),
            })?;
            let Some(&id) = self.by_name.get(&normalize_name(name)) else {
                continue; // a built-in or absent module: nothing to load
            };
            let (pre, post) = parse_softdep_words(words);
            if let Some(m) = self.modules.get_mut(id) {
                m.pre.extend(pre);
                m.post.extend(post);
            }
        }
        Ok(())
    }

    /// Adds the exact aliases of a `modules.alias` text (`alias <alias>
    /// <module>` lines); wildcard aliases (device IDs) and aliases of
    /// modules not in the index are left out.
    pub fn with_aliases(mut self, alias: &str) -> Result<Self, KmodError> {
        for (n, raw) in alias.lines().enumerate() {
            let mut words = raw.split_whitespace();
            if words.next() != Some("alias") {
                continue;
            }
            let (Some(name), Some(module)) = (words.next(), words.next()) else {
                return Err(KmodError::Malformed {
                    file: "modules.alias",
                    line: n + 1,
                    reason: "expected \"alias <alias> <module>\"".into(),
                });
            };
            if name.contains(['*', '?', '[']) {
                continue;
            }
            if let Some(&id) = self.by_name.get(&normalize_name(module)) {
                let ids = self.aliases.entry(normalize_name(name)).or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(self)
    }

    /// The modules a dependency name stands for: the module of that name,
    /// else the modules with that exact alias, else none.
    fn lookup(&self, canonical: &str) -> Vec<usize> {
        match self.by_name.get(canonical) {
            Some(&id) => vec![id],
            None => self.aliases.get(canonical).cloned().unwrap_or_default(),
        }
    }

    /// Whether `name` is built into the kernel (listed in modules.builtin).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    /// The loadable module called `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<ModuleEntry> {
        let id = *self.by_name.get(&normalize_name(name))?;
        self.entry(id)
    }

    /// Every loadable module, in the order of the index's input.
    pub fn modules(&self) -> Vec<ModuleEntry> {
        (0..self.modules.len())
            .filter_map(|id| self.entry(id))
            .collect()
    }

    /// Number of loadable modules.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    fn entry(&self, id: usize) -> Option<ModuleEntry> {
        self.modules.get(id).map(|m| ModuleEntry {
            name: m.name.clone(),
            path: m.path.clone(),
        })
    }

    fn name_of(&self, id: usize) -> String {
        self.modules
            .get(id)
            .map_or_else(|| format!("#{id}"), |m| m.name.clone())
    }

    /// Every module needed to load `names`, in load order: dependencies
    /// before dependents, `pre:` soft dependencies before and `post:` after
    /// the module, each once. Built-in names are skipped. The order depends
    /// only on the inputs.
    ///
    /// A soft dependency that cannot go where it asks (it needs, through
    /// hard dependencies, a module that is waiting for it) is loaded after
    /// the requested module instead: soft dependencies never break a hard
    /// one, and only a cycle of hard dependencies is an error.
    pub fn closure(&self, names: &[&str]) -> Result<Vec<ModuleEntry>, KmodError> {
        let mut roots = Vec::new();
        for name in names {
            let canonical = normalize_name(name);
            match self.by_name.get(&canonical) {
                Some(&id) => roots.push(id),
                None if self.builtin.contains(&canonical) => {}
                None if self.aliases.contains_key(&canonical) => {
                    roots.extend(self.lookup(&canonical));
                }
                None => {
                    return Err(KmodError::Unknown {
                        name: (*name).to_string(),
                        suggestions: self.suggest(&canonical),
                    })
                }
            }
        }
        let mut marks = vec![Mark::New; self.modules.len()];
        let mut order = Vec::new();
        for root in roots {
            let mut pending = VecDeque::from([root]);
            while let Some(id) = pending.pop_front() {
                self.walk(id, &mut marks, &mut order, &mut pending)?;
            }
        }
        Ok(order.into_iter().filter_map(|id| self.entry(id)).collect())
    }

    fn frame(&self, id: usize) -> Frame {
        let mut steps = Vec::new();
        if let Some(m) = self.modules.get(id) {
            let resolve = |n: &String| self.lookup(n);
            steps.extend(m.pre.iter().flat_map(resolve).map(Step::Soft));
            // depmod lists the module loaded last first.
            steps.extend(m.deps.iter().rev().copied().map(Step::Hard));
            steps.push(Step::Emit);
            steps.extend(m.post.iter().flat_map(resolve).map(Step::Soft));
        }
        Frame { id, steps, next: 0 }
    }

    /// Depth-first walk from `root`, appending modules to `order` once all
    /// they need is there. Soft dependencies that would close a cycle go to
    /// `deferred`, walked once `root` is done.
    fn walk(
        &self,
        root: usize,
        marks: &mut [Mark],
        order: &mut Vec<usize>,
        deferred: &mut VecDeque<usize>,
    ) -> Result<(), KmodError> {
        if marks.get(root) != Some(&Mark::New) {
            return Ok(());
        }
        set_mark(marks, root, Mark::InProgress);
        let mut stack = vec![self.frame(root)];
        loop {
            let (id, step) = match stack.last_mut() {
                None => return Ok(()),
                Some(frame) => {
                    let step = frame.steps.get(frame.next).copied();
                    frame.next += 1;
                    (frame.id, step)
                }
            };
            match step {
                None => {
                    stack.pop();
                }
                Some(Step::Emit) => {
                    set_mark(marks, id, Mark::Done);
                    order.push(id);
                }
                Some(Step::Hard(dep)) => match marks.get(dep) {
                    Some(Mark::New) => {
                        set_mark(marks, dep, Mark::InProgress);
                        stack.push(self.frame(dep));
                    }
                    Some(Mark::InProgress) => {
                        // Every soft edge into a path back to an unfinished
                        // module is deferred (below), so this cycle is made
                        // of hard dependencies only.
                        let from = stack.iter().position(|f| f.id == dep).unwrap_or(0);
                        let mut cycle: Vec<String> = stack
                            .get(from..)
                            .unwrap_or(&[])
                            .iter()
                            .map(|f| self.name_of(f.id))
                            .collect();
                        cycle.push(self.name_of(dep));
                        return Err(KmodError::Cycle { cycle });
                    }
                    _ => {}
                },
                Some(Step::Soft(dep)) => {
                    if marks.get(dep) == Some(&Mark::Done) {
                        continue;
                    }
                    if self.needs_unfinished(dep, marks) {
                        deferred.push_back(dep);
                    } else {
                        set_mark(marks, dep, Mark::InProgress);
                        stack.push(self.frame(dep));
                    }
                }
            }
        }
    }

    /// Whether `id` or anything it hard-depends on is being walked (so it
    /// cannot load before the module that asked for it).
    fn needs_unfinished(&self, id: usize, marks: &[Mark]) -> bool {
        let mut seen = HashSet::from([id]);
        let mut todo = vec![id];
        while let Some(cur) = todo.pop() {
            match marks.get(cur) {
                Some(Mark::InProgress) => return true,
                Some(Mark::Done) => continue, // its dependencies are done too
                _ => {}
            }
            if let Some(m) = self.modules.get(cur) {
                todo.extend(m.deps.iter().copied().filter(|d| seen.insert(*d)));
            }
        }
        false
    }

    /// Up to three existing module names closest to `name` (edit distance,
    /// transpositions counted once), closest first.
    fn suggest(&self, name: &str) -> Vec<String> {
        let limit = (name.chars().count() / 3).max(2);
        let mut scored: Vec<(usize, &str)> = self
            .modules
            .iter()
            .map(|m| m.name.as_str())
            .chain(self.builtin.iter().map(String::as_str))
            .map(|cand| (strsim::osa_distance(name, cand), cand))
            .filter(|(d, _)| *d <= limit)
            .collect();
        scored.sort_unstable();
        scored.dedup();
        scored
            .into_iter()
            .take(3)
            .map(|(_, n)| n.to_string())
            .collect()
    }

    /// Hard dependencies of `id`, transitively, in load order, without `id`.
    fn hard_closure(&self, id: usize) -> Vec<usize> {
        let mut seen = HashSet::from([id]);
        let mut order = Vec::new();
        // (module, next dependency to look at), walked without recursion.
        let mut stack = vec![(id, 0usize)];
        while let Some((cur, i)) = stack.pop() {
            let deps = self.modules.get(cur).map_or(&[][..], |m| &m.deps[..]);
            // Reverse of the listed order, as in `frame`.
            match deps.len().checked_sub(i + 1).and_then(|j| deps.get(j)) {
                Some(&dep) => {
                    stack.push((cur, i + 1));
                    if seen.insert(dep) {
                        stack.push((dep, 0));
                    }
                }
                None if cur != id => order.push(cur),
                None => {}
            }
        }
        order
    }

    /// The `modules.dep` text for `entries` (normally a [`closure`]): one
    /// line per entry in the given order, each listing every hard
    /// dependency, the one loaded last first, as depmod writes it.
    ///
    /// [`closure`]: ModuleIndex::closure
    pub fn to_modules_dep(&self, entries: &[ModuleEntry]) -> String {
        let mut out = String::new();
        for entry in entries {
            out.push_str(&entry.path);
            out.push(':');
            if let Some(&id) = self.by_name.get(&normalize_name(&entry.name)) {
                for dep in self.hard_closure(id).into_iter().rev() {
                    if let Some(m) = self.modules.get(dep) {
                        out.push(' ');
                        out.push_str(&m.path);
                    }
                }
            }
            out.push('\n');
        }
        out
    }

    /// The `modules.softdep` text for `entries`: their soft dependencies,
    /// by module name (aliases resolved), that are themselves among
    /// `entries` (the others would be skipped anyway), so the runtime
    /// computes the same order as the builder.
    pub fn to_modules_softdep(&self, entries: &[ModuleEntry]) -> String {
        let present: HashSet<String> = entries.iter().map(|e| normalize_name(&e.name)).collect();
        let mut out = String::new();
        for entry in entries {
            let Some(m) = self
                .by_name
                .get(&normalize_name(&entry.name))
                .and_then(|&id| self.modules.get(id))
            else {
                continue;
            };
            // Aliases resolve to module names here: the image needs no
            // modules.alias.
            let pick = |names: &[String]| -> Vec<String> {
                let mut seen = HashSet::new();
                names
                    .iter()
                    .flat_map(|n| self.lookup(n))
                    .filter_map(|id| self.modules.get(id))
                    .map(|dep| dep.name.clone())
                    .filter(|n| present.contains(n) && seen.insert(n.clone()))
                    .collect()
            };
            let (pre, post) = (pick(&m.pre), pick(&m.post));
            if pre.is_empty() && post.is_empty() {
                continue;
            }
            let _ = write!(out, "softdep {}", m.name);
            if !pre.is_empty() {
                let _ = write!(out, " pre: {}", pre.join(" "));
            }
            if !post.is_empty() {
                let _ = write!(out, " post: {}", post.join(" "));
            }
            out.push('\n');
        }
        out
    }
}

fn set_mark(marks: &mut [Mark], id: usize, mark: Mark) {
    if let Some(m) = marks.get_mut(id) {
        *m = mark;
    }
}

/// Splits the words after `softdep <module>` into canonical `pre:` and
/// `post:` names. Words before any `pre:`/`post:` are ignored, like kmod.
fn parse_softdep_words<'a>(words: impl Iterator<Item = &'a str>) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    let mut target: Option<&mut Vec<String>> = None;
    for word in words {
        match word {
            "pre:" => target = Some(&mut pre),
            "post:" => target = Some(&mut post),
            _ => {
                if let Some(list) = target.as_deref_mut() {
                    list.push(normalize_name(word));
                }
            }
        }
    }
    (pre, post)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `kmod` fuzz target: a path with a space was indexed,
    /// and the modules.dep kiln wrote from it did not parse back.
    #[test]
    fn paths_modules_dep_cannot_hold_are_refused() {
        for (dep, bad) in [
            ("kernel/a b/kvm.ko:\n", "kernel/a b/kvm.ko"),
            ("kvm.ko: irq:bypass.ko\n", "irq:bypass.ko"),
        ] {
            let e = ModuleIndex::from_modules_dep(dep, None, None)
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!("Cannot parse modules.dep line 1: \"{bad}\" has whitespace or ':' in it, which modules.dep cannot hold")
            );
        }
        let index = ModuleIndex::from_modules_dep("k/a.ko: k/b.ko\nk/b.ko:\n", None, None).unwrap();
        let all = index.modules();
        let again = ModuleIndex::from_modules_dep(&index.to_modules_dep(&all), None, None).unwrap();
        assert_eq!(again.modules(), all);
    }

    fn names(entries: &[ModuleEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.name.as_str()).collect()
    }

    fn pos(entries: &[ModuleEntry], name: &str) -> usize {
        entries
            .iter()
            .position(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {:?}", names(entries)))
    }

    const KVM: &str = "\
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-intel.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/crypto/ccp/ccp.ko.xz:
";

    #[test]
    fn chain_loads_dependencies_first() {
        let idx = ModuleIndex::from_modules_dep(KVM, None, None).unwrap();
        let c = idx.closure(&["kvm-amd"]).unwrap();
        assert_eq!(names(&c), ["irqbypass", "kvm", "kvm_amd"]);
        assert_eq!(c[2].path, "kernel/arch/x86/kvm/kvm-amd.ko");
        // Asking for something already pulled in adds nothing.
        let c2 = idx.closure(&["kvm_amd", "kvm", "irqbypass"]).unwrap();
        assert_eq!(c, c2);
    }

    #[test]
    fn direct_only_dependencies_are_followed() {
        let dep = "c.ko: b.ko\nb.ko: a.ko\na.ko:\n";
        let idx = ModuleIndex::from_modules_dep(dep, None, None).unwrap();
        assert_eq!(names(&idx.closure(&["c"]).unwrap()), ["a", "b", "c"]);
    }

    #[test]
    fn diamond_is_loaded_once_in_a_valid_order() {
        // top -> left, right; left -> base; right -> base
        let dep =
            "top.ko: right.ko left.ko base.ko\nleft.ko: base.ko\nright.ko: base.ko\nbase.ko:\n";
        let idx = ModuleIndex::from_modules_dep(dep, None, None).unwrap();
        let c = idx.closure(&["top"]).unwrap();
        assert_eq!(c.len(), 4);
        assert!(pos(&c, "base") < pos(&c, "left"));
        assert!(pos(&c, "base") < pos(&c, "right"));
        assert!(pos(&c, "left") < pos(&c, "top"));
        assert!(pos(&c, "right") < pos(&c, "top"));
        // Deterministic: the same inputs give the same order.
        assert_eq!(c, idx.closure(&["top"]).unwrap());
    }

    #[test]
    fn softdeps_pre_before_post_after_missing_skipped() {
        let soft = "# comment\nsoftdep kvm_amd pre: ccp nosuchmod post: kvm-intel\nsoftdep nothere pre: kvm\n";
        let idx = ModuleIndex::from_modules_dep(KVM, Some(soft), None).unwrap();
        let c = idx.closure(&["kvm-amd"]).unwrap();
        assert_eq!(
            names(&c),
            ["ccp", "irqbypass", "kvm", "kvm_amd", "kvm_intel"]
        );
        assert_eq!(c[0].path, "kernel/drivers/crypto/ccp/ccp.ko.xz");
    }

    #[test]
    fn softdep_words_before_pre_or_post_are_ignored() {
        let soft = "softdep kvm_amd ccp\n";
        let idx = ModuleIndex::from_modules_dep(KVM, Some(soft), None).unwrap();
        assert_eq!(
            names(&idx.closure(&["kvm_amd"]).unwrap()),
            ["irqbypass", "kvm", "kvm_amd"]
        );
    }

    #[test]
    fn builtin_is_skipped_not_an_error() {
        let builtin = "kernel/virt/lib/irqbypass.ko\nkernel/crypto/crc32c_generic.ko\n";
        let dep = "kernel/arch/x86/kvm/kvm.ko:\n";
        let idx = ModuleIndex::from_modules_dep(dep, None, Some(builtin)).unwrap();
        assert!(idx.is_builtin("crc32c-generic"));
        assert!(!idx.is_builtin("kvm"));
        assert_eq!(
            names(&idx.closure(&["crc32c_generic", "kvm"]).unwrap()),
            ["kvm"]
        );
    }

    #[test]
    fn unknown_name_suggests_close_ones() {
        let idx = ModuleIndex::from_modules_dep(KVM, None, None).unwrap();
        let err = idx.closure(&["kvm", "kvm_amdd"]).unwrap_err();
        match &err {
            KmodError::Unknown { name, suggestions } => {
                assert_eq!(name, "kvm_amdd");
                assert_eq!(suggestions.first().map(String::as_str), Some("kvm_amd"));
                assert!(suggestions.len() <= 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.starts_with(
            "Module \"kvm_amdd\" does not exist in this kernel; did you mean kvm_amd"
        ));
        let far = idx.closure(&["snd_hda_intel"]).unwrap_err();
        assert_eq!(
            far.to_string(),
            "Module \"snd_hda_intel\" does not exist in this kernel"
        );
    }

    #[test]
    fn hard_cycle_is_an_error() {
        let dep = "a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\nd.ko:\n";
        let idx = ModuleIndex::from_modules_dep(dep, None, None).unwrap();
        match idx.closure(&["d", "a"]).unwrap_err() {
            KmodError::Cycle { cycle } => assert_eq!(cycle, ["a", "b", "c", "a"]),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn soft_cycles_resolve_without_breaking_hard_deps() {
        // a wants b first, but b needs a: b goes after a.
        let dep = "a.ko:\nb.ko: a.ko\nc.ko:\nd.ko:\n";
        let soft = "softdep a pre: b\nsoftdep c pre: d\nsoftdep d pre: c\n";
        let idx = ModuleIndex::from_modules_dep(dep, Some(soft), None).unwrap();
        assert_eq!(names(&idx.closure(&["a"]).unwrap()), ["a", "b"]);
        assert_eq!(names(&idx.closure(&["c"]).unwrap()), ["d", "c"]);
        // m wants p first, p wants q first, but q needs m: q goes last.
        let dep = "m.ko:\np.ko:\nq.ko: m.ko\n";
        let soft = "softdep m pre: p\nsoftdep p pre: q\n";
        let idx = ModuleIndex::from_modules_dep(dep, Some(soft), None).unwrap();
        assert_eq!(names(&idx.closure(&["m"]).unwrap()), ["p", "m", "q"]);
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let err = ModuleIndex::from_modules_dep("a.ko:\nnot a line\n", None, None).unwrap_err();
        assert!(matches!(err, KmodError::Malformed { line: 2, .. }), "{err}");
        let err = ModuleIndex::from_modules_dep("a.txt:\n", None, None).unwrap_err();
        assert!(err.to_string().contains("\"a.txt\" is not a kernel module"));
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(
            module_name_from_path("kernel/drivers/vfio/pci/vfio-pci.ko.zst").as_deref(),
            Some("vfio_pci")
        );
        assert_eq!(module_name_from_path("a/b.ko.gz").as_deref(), Some("b"));
        assert_eq!(module_name_from_path("a/b.o"), None);
        assert_eq!(module_name_from_path(".ko"), None);
    }

    #[test]
    fn modules_dep_round_trips_for_a_subset() {
        let soft = "softdep kvm_amd pre: ccp post: kvm_intel\n";
        let idx = ModuleIndex::from_modules_dep(KVM, Some(soft), None).unwrap();
        let subset = idx.closure(&["kvm"]).unwrap();
        let dep = idx.to_modules_dep(&subset);
        assert_eq!(
            dep,
            "kernel/virt/lib/irqbypass.ko:\nkernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko\n"
        );
        // The softdep of kvm_amd is not part of this subset.
        assert_eq!(idx.to_modules_softdep(&subset), "");

        let full = idx.closure(&["kvm_amd"]).unwrap();
        let dep = idx.to_modules_dep(&full);
        assert!(dep.contains(
            "kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko\n"
        ));
        let soft_out = idx.to_modules_softdep(&full);
        assert_eq!(soft_out, "softdep kvm_amd pre: ccp post: kvm_intel\n");
        // What the image gets computes the same closure as the original.
        let again = ModuleIndex::from_modules_dep(&dep, Some(&soft_out), None).unwrap();
        assert_eq!(again.closure(&["kvm_amd"]).unwrap(), full);
        assert_eq!(again.len(), full.len());
    }

    #[test]
    fn aliases_stand_for_their_modules() {
        let dep = "kernel/lib/libcrc32c.ko:\nkernel/arch/x86/crypto/crc32c-intel.ko:\nkernel/crypto/md5.ko:\n";
        let soft = "softdep libcrc32c pre: crc32c post: crypto-md5\n";
        let alias = "alias crypto-crc32c crc32c_intel\nalias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias pci:v00001234d*sv*sd*bc*sc*i* md5\nalias crypto-md5 md5\n";
        let builtin = "kernel/crypto/crc32c_generic.ko\n";
        let idx = ModuleIndex::from_modules_dep(dep, Some(soft), Some(builtin))
            .unwrap()
            .with_aliases(alias)
            .unwrap();
        let c = idx.closure(&["libcrc32c"]).unwrap();
        assert_eq!(names(&c), ["crc32c_intel", "libcrc32c", "md5"]);
        // The image's softdep names modules, not aliases.
        assert_eq!(
            idx.to_modules_softdep(&c),
            "softdep libcrc32c pre: crc32c_intel post: md5\n"
        );
        // A requested alias works like modprobe's; wildcards are not names.
        assert_eq!(names(&idx.closure(&["crc32c"]).unwrap()), ["crc32c_intel"]);
        assert!(idx.closure(&["pci:v00001234d*sv*sd*bc*sc*i*"]).is_err());
        // Without aliases, those soft dependencies are simply absent.
        let plain = ModuleIndex::from_modules_dep(dep, Some(soft), Some(builtin)).unwrap();
        assert_eq!(
            names(&plain.closure(&["libcrc32c"]).unwrap()),
            ["libcrc32c"]
        );
        assert!(matches!(
            plain.clone().with_aliases("alias onlyone\n"),
            Err(KmodError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn every_softdep_line_counts() {
        let soft = "softdep kvm_amd pre: ccp\nsoftdep kvm_amd post: kvm_intel\n";
        let idx = ModuleIndex::from_modules_dep(KVM, Some(soft), None).unwrap();
        assert_eq!(
            names(&idx.closure(&["kvm_amd"]).unwrap()),
            ["ccp", "irqbypass", "kvm", "kvm_amd", "kvm_intel"]
        );
    }

    #[test]
    fn duplicate_names_keep_the_first_line() {
        let dep = "updates/x.ko:\nkernel/x.ko.xz: b.ko\nupdates/y.ko: a.ko\nkernel/y.ko: b.ko\na.ko:\nb.ko:\n";
        let idx = ModuleIndex::from_modules_dep(dep, None, None).unwrap();
        let c = idx.closure(&["x"]).unwrap();
        assert_eq!(names(&c), ["x"]);
        assert_eq!(c[0].path, "updates/x.ko");
        assert_eq!(names(&idx.closure(&["y"]).unwrap()), ["a", "y"]);
    }
}
