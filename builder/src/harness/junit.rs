//! The JUnit XML report (docs/architecture.md, "Verdicts"; docs/testing.md): `<testsuites>` → one `<testsuite>`
//! per image run, with its `<properties>` → one `<testcase>` per VM, with
//! `<failure>` or `<error>` and the VM's console in `<system-out>`.
//!
//! The writer is hand-written: the document has one fixed shape, and the
//! part that needs care — removing what XML 1.0 cannot hold at all (control
//! characters, escape sequences from a guest) — is not something an XML
//! crate does for its caller; escaping the five special characters is the
//! rest. `tests/data/junit.xsd` is the schema the tests check it against.

use super::console;
use super::judge::Verdict;
use super::RunOutcome;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lines of a VM's console repeated in its `<failure>`/`<error>` text,
/// where CI pages show them first.
const FAILURE_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("Cannot write the JUnit report {}; check that its folder exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// This machine's name, or `localhost` when it has none.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The report of `runs` as an XML document.
pub fn render(runs: &[RunOutcome], hostname: &str) -> String {
    let count = |v: Verdict| {
        runs.iter()
            .flat_map(|r| &r.vms)
            .filter(|vm| vm.verdict == v)
            .count()
    };
    let tests: usize = runs.iter().map(|r| r.vms.len()).sum();
    let total: Duration = runs.iter().map(|r| r.duration).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"kiln test\" tests=\"{tests}\" failures=\"{}\" errors=\"{}\" skipped=\"0\" time=\"{}\">\n",
        count(Verdict::Failure),
        count(Verdict::Error),
        seconds(total)
    ));
    for (id, run) in runs.iter().enumerate() {
        suite(&mut x, id, run, hostname);
    }
    x.push_str("</testsuites>\n");
    x
}

fn suite(x: &mut String, id: usize, run: &RunOutcome, hostname: &str) {
    let classname = format!("{}.{}", run.image, run.target);
    let failures = run
        .vms
        .iter()
        .filter(|v| v.verdict == Verdict::Failure)
        .count();
    let errors = run
        .vms
        .iter()
        .filter(|v| v.verdict == Verdict::Error)
        .count();
    let timestamp = chrono::DateTime::<chrono::Utc>::from(run.started)
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    x.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"0\" time=\"{}\" timestamp=\"{timestamp}\" hostname=\"{}\" id=\"{id}\" package=\"{}\">\n",
        attr(&classname),
        run.vms.len(),
        seconds(run.duration),
        attr(hostname),
        attr(&run.image),
    ));
    x.push_str("    <properties>\n");
    for (name, value) in &run.properties {
        x.push_str(&format!(
            "      <property name=\"{}\" value=\"{}\"/>\n",
            attr(name),
            attr(value)
        ));
    }
    x.push_str("    </properties>\n");
    for vm in &run.vms {
        x.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\">\n",
            attr(&classname),
            attr(&vm.name),
            seconds(vm.time)
        ));
        let element = match vm.verdict {
            Verdict::Pass => None,
            Verdict::Failure => Some("failure"),
            Verdict::Error => Some("error"),
        };
        if let Some(el) = element {
            let mut body = vm.reason.clone();
            let last = vm.excerpt.last(FAILURE_LINES);
            if !last.is_empty() {
                body.push_str("\n\nLast console lines of this VM:\n");
                body.push_str(&last.join("\n"));
            }
            x.push_str(&format!(
                "      <{el} message=\"{}\" type=\"{}\">{}</{el}>\n",
                attr(&vm.reason),
                attr(&vm.kind),
                text(&body)
            ));
        }
        if !vm.excerpt.is_empty() {
            x.push_str(&format!(
                "      <system-out>{}</system-out>\n",
                text(&vm.excerpt.text())
            ));
        }
        x.push_str("    </testcase>\n");
    }
    if let Some((kind, message)) = &run.error {
        let mut body = format!("run error ({kind}): {message}\n");
        if !run.tail.is_empty() {
            body.push_str("\nLast console lines:\n");
            body.push_str(&run.tail.join("\n"));
            body.push('\n');
        }
        x.push_str(&format!("    <system-err>{}</system-err>\n", text(&body)));
    }
    x.push_str("  </testsuite>\n");
}

/// Seconds with millisecond precision, as JUnit's `xs:decimal` times.
fn seconds(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// Text content: each line cleaned of escapes and controls, then escaped.
fn text(s: &str) -> String {
    let cleaned: Vec<String> = s
        .split('\n')
        .map(|l| console::clean(l.as_bytes()))
        .collect();
    escape(&cleaned.join("\n"), false)
}

/// An attribute value: cleaned, escaped, and line breaks kept as
/// character references (a parser would fold raw ones into spaces).
fn attr(s: &str) -> String {
    let cleaned: Vec<String> = s
        .split('\n')
        .map(|l| console::clean(l.as_bytes()))
        .collect();
    escape(&cleaned.join("\n"), true)
}

fn escape(s: &str, in_attr: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if in_attr => out.push_str("&quot;"),
            '\n' if in_attr => out.push_str("&#10;"),
            '\t' if in_attr => out.push_str("&#9;"),
            c if xml_char(c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// XML 1.0's `Char` production.
fn xml_char(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r'
        | '\u{20}'..='\u{d7ff}'
        | '\u{e000}'..='\u{fffd}'
        | '\u{10000}'..='\u{10ffff}')
}

/// Writes the report to `path` through a temporary file and a rename, so a
/// reader never sees half a report; its mode is 0666 less the umask.
pub fn write(path: &Path, runs: &[RunOutcome], hostname: &str) -> Result<(), JunitError> {
    let err = |source| JunitError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = crate::atomic::output_file_beside(path).map_err(err)?;
    tmp.write_all(render(runs, hostname).as_bytes())
        .map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::console::Excerpt;
    use crate::harness::judge::VmResult;
    use std::time::SystemTime;

    fn vm(name: &str, verdict: Verdict, kind: &str, reason: &str, lines: &[&str]) -> VmResult {
        let mut excerpt = Excerpt::new(1 << 20);
        for l in lines {
            excerpt.push(l);
        }
        VmResult {
            name: name.into(),
            verdict,
            kind: kind.into(),
            reason: reason.into(),
            time: Duration::from_millis(2345),
            code: None,
            excerpt,
        }
    }

    pub(crate) fn sample() -> Vec<RunOutcome> {
        vec![RunOutcome {
            image: "hello".into(),
            target: "qemu".into(),
            attempt: 1,
            attempts: 1,
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(8004),
            properties: vec![
                ("image.digest".into(), "sha256:ab".into()),
                ("attempt".into(), "1".into()),
            ],
            vms: vec![
                vm("hello", Verdict::Pass, "", "", &["hello: exit 0"]),
                vm(
                    "edu",
                    Verdict::Failure,
                    "fail-pattern",
                    "matched /<&>\"/",
                    &["\u{1b}[31mred\u{1b}[0m & <b>", "bell\u{7} nul\u{0} ok"],
                ),
                vm(
                    "late",
                    Verdict::Error,
                    "run-timeout",
                    "it never started",
                    &[],
                ),
            ],
            error: Some(("run-timeout".into(), "the run timed out after 10s".into())),
            tail: vec!["last line".into()],
        }]
    }

    #[test]
    fn renders_the_design_shape() {
        let x = render(&sample(), "buildbox");
        assert!(x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"kiln test\" tests=\"3\" failures=\"1\" errors=\"1\" skipped=\"0\" time=\"8.004\">"), "{x}");
        assert!(x.contains("<testsuite name=\"hello.qemu\" tests=\"3\" failures=\"1\" errors=\"1\" skipped=\"0\" time=\"8.004\" timestamp=\"2023-11-14T22:13:20\" hostname=\"buildbox\" id=\"0\" package=\"hello\">"), "{x}");
        assert!(x.contains("<property name=\"image.digest\" value=\"sha256:ab\"/>"));
        assert!(x.contains("<testcase classname=\"hello.qemu\" name=\"hello\" time=\"2.345\">\n      <system-out>hello: exit 0\n</system-out>"), "{x}");
        assert!(x.contains("<failure message=\"matched /&lt;&amp;&gt;&quot;/\" type=\"fail-pattern\">matched /&lt;&amp;&gt;\"/\n\nLast console lines of this VM:\nred &amp; &lt;b&gt;\nbell nul ok</failure>"), "{x}");
        assert!(x.contains("<error message=\"it never started\" type=\"run-timeout\">it never started</error>\n    </testcase>"), "{x}");
        assert!(x.contains("<system-err>run error (run-timeout): the run timed out after 10s\n\nLast console lines:\nlast line\n</system-err>"), "{x}");
        assert!(
            !x.chars().any(|c| c.is_control() && !matches!(c, '\n')),
            "{x:?}"
        );
    }

    #[test]
    fn attribute_line_breaks_survive() {
        assert_eq!(attr("a\nb\t\"c\"\u{1b}[1m"), "a&#10;b&#9;&quot;c&quot;");
    }

    #[test]
    fn written_through_a_rename() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("reports/junit.xml");
        write(&path, &sample(), "h").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            render(&sample(), "h")
        );
        let entries = std::fs::read_dir(d.path().join("reports")).unwrap().count();
        assert_eq!(entries, 1, "no temporary file left behind");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !crate::atomic::umask(), "mode {mode:o}");
    }
}
