use super::error::Located;
use std::fmt;

/// A path to a key in a TOML document: `vm[1].boot.kernel`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub fn root() -> Self {
        KeyPath::default()
    }

    /// Builds a path from dotted keys, e.g. `KeyPath::parse("boot.kernel")`.
    pub fn parse(dotted: &str) -> Self {
        let mut path = KeyPath::root();
        for part in dotted.split('.').filter(|p| !p.is_empty()) {
            match part.split_once('[') {
                Some((name, index)) => {
                    path.push_key(name);
                    if let Ok(i) = index.trim_end_matches(']').parse() {
                        path.push_index(i);
                    }
                }
                None => path.push_key(part),
            }
        }
        path
    }

    pub fn key(mut self, key: &str) -> Self {
        self.push_key(key);
        self
    }

    pub fn index(mut self, index: usize) -> Self {
        self.push_index(index);
        self
    }

    pub fn push_key(&mut self, key: &str) {
        self.0.push(Segment::Key(key.to_string()));
    }

    /// Appends `key` unless the path already ends with it.
    pub fn push_key_once(&mut self, key: &str) {
        if !matches!(self.0.last(), Some(Segment::Key(k)) if k == key) {
            self.push_key(key);
        }
    }

    /// The last key of the path (`vcpus` of `vm[0].vcpus`).
    pub fn last_key(&self) -> Option<&str> {
        self.0.iter().rev().find_map(|s| match s {
            Segment::Key(k) => Some(k.as_str()),
            Segment::Index(_) => None,
        })
    }

    pub fn push_index(&mut self, index: usize) {
        self.0.push(Segment::Index(index));
    }

    pub(super) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment as S;
        let mut out = KeyPath::root();
        for seg in path.iter() {
            match seg {
                S::Seq { index } => out.push_index(*index),
                S::Map { key } => out.push_key(key),
                S::Enum { variant } => out.push_key(variant),
                S::Unknown => {}
            }
        }
        out
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if i == 0 => write!(f, "{k}")?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Finds where `path` is written in `src`: the deepest key of the path that
/// exists (or its array element), otherwise the start of the document.
pub fn locate(src: &str, path: &KeyPath) -> Located {
    let Ok(doc) = toml_edit::ImDocument::parse(src) else {
        return Located { line: 1, column: 1 };
    };
    let mut best = 0usize;
    let mut node = Node::Table(doc.as_table());
    for seg in &path.0 {
        let next = match (seg, node) {
            (Segment::Key(k), n) => {
                n.table_like()
                    .and_then(|t| t.get_key_value(k))
                    .map(|(key, v)| {
                        if let Some(span) = key.span() {
                            best = span.start;
                        }
                        Node::Item(v)
                    })
            }
            (Segment::Index(i), Node::Item(toml_edit::Item::ArrayOfTables(a))) => {
                a.get(*i).map(|t| {
                    if let Some(span) = t.span() {
                        best = span.start;
                    }
                    Node::Table(t)
                })
            }
            (Segment::Index(i), n) => n.array().and_then(|a| a.get(*i)).map(|v| {
                if let Some(span) = v.span() {
                    best = span.start;
                }
                Node::Value(v)
            }),
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    Located::from_offset(src, best)
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

impl<'a> Node<'a> {
    fn table_like(self) -> Option<&'a dyn toml_edit::TableLike> {
        match self {
            Node::Item(i) => i.as_table_like(),
            Node::Table(t) => Some(t),
            Node::Value(v) => v.as_inline_table().map(|t| t as &dyn toml_edit::TableLike),
        }
    }

    fn array(self) -> Option<&'a toml_edit::Array> {
        match self {
            Node::Item(i) => i.as_array(),
            Node::Table(_) => None,
            Node::Value(v) => v.as_array(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_and_array_tables() {
        let src = "name = \"a\"\n\n[[vm]]\nname = \"x\"\n\n[[vm]]\nname = \"y\"\n[vm.boot]\nkernel = \"k\"\n";
        let at = locate(src, &KeyPath::parse("vm[1].boot.kernel"));
        assert_eq!((at.line, at.column), (9, 1));
        let at = locate(src, &KeyPath::parse("vm[1].name"));
        assert_eq!((at.line, at.column), (7, 1));
        // A key that does not exist falls back to its deepest existing parent.
        let at = locate(src, &KeyPath::parse("vm[0].memory"));
        assert_eq!(at.line, 3);
    }

    #[test]
    fn locates_array_values() {
        let src = "modules = [\"a\",\n  \"b\"]\n";
        let at = locate(src, &KeyPath::parse("modules[1]"));
        assert_eq!((at.line, at.column), (2, 3));
    }
}
