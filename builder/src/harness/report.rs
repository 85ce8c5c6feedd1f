//! The summary table `kiln test` prints when it is done: one row per VM of
//! each image, its verdict over all attempts, and why it did not pass.
//!
//! ```text
//! IMAGE  VM     VERDICT  TIME  ATTEMPTS     REASON
//! hello  hello  pass     2.1s  ...
//! edu    edu    fail     4.0s  .F.  flaky   attempt 2: it exited with code 3
//! ```
//!
//! With `--repeat`, ATTEMPTS shows each attempt as `.` (pass), `F`
//! (failure) or `E` (error), and `flaky` when they disagree.

use super::judge::{secs, Verdict};
use super::RunOutcome;
use std::time::Duration;

/// One VM of one image over its attempts.
struct Row<'a> {
    image: &'a str,
    vm: &'a str,
    attempts: Vec<(u32, &'a super::VmResult)>,
}

impl Row<'_> {
    fn worst(&self) -> Verdict {
        self.attempts
            .iter()
            .map(|(_, r)| r.verdict)
            .max()
            .unwrap_or(Verdict::Pass)
    }

    fn flaky(&self) -> bool {
        let mut verdicts = self.attempts.iter().map(|(_, r)| r.verdict);
        match verdicts.next() {
            Some(first) => verdicts.any(|v| v != first),
            None => false,
        }
    }
}

fn rows(runs: &[RunOutcome]) -> Vec<Row<'_>> {
    let mut rows: Vec<Row> = Vec::new();
    for run in runs {
        for vm in &run.vms {
            match rows
                .iter_mut()
                .find(|r| r.image == run.image && r.vm == vm.name)
            {
                Some(row) => row.attempts.push((run.attempt, vm)),
                None => rows.push(Row {
                    image: &run.image,
                    vm: &vm.name,
                    attempts: vec![(run.attempt, vm)],
                }),
            }
        }
    }
    rows
}

fn mark(v: Verdict) -> char {
    match v {
        Verdict::Pass => '.',
        Verdict::Failure => 'F',
        Verdict::Error => 'E',
    }
}

/// The summary of `runs` as text, ending with a totals line.
pub fn summary(runs: &[RunOutcome], interrupted: bool) -> String {
    let rows = rows(runs);
    let repeated = runs.iter().any(|r| r.attempts > 1);
    let mut table: Vec<Vec<String>> = vec![{
        let mut h = vec!["IMAGE", "VM", "VERDICT", "TIME"];
        if repeated {
            h.push("ATTEMPTS");
        }
        h.push("REASON");
        h.into_iter().map(str::to_string).collect()
    }];
    for row in &rows {
        let worst = row.worst();
        let n = row.attempts.len().max(1);
        let mean = row
            .attempts
            .iter()
            .map(|(_, r)| r.time)
            .sum::<Duration>()
            .checked_div(u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or_default();
        let first_bad = row
            .attempts
            .iter()
            .find(|(_, r)| r.verdict != Verdict::Pass);
        let reason = match first_bad {
            Some((attempt, r)) if repeated => format!("attempt {attempt}: {}", r.reason),
            Some((_, r)) => r.reason.clone(),
            None => String::new(),
        };
        let mut cells = vec![
            row.image.to_string(),
            row.vm.to_string(),
            worst.as_str().to_string(),
            secs_short(mean),
        ];
        if repeated {
            let marks: String = row.attempts.iter().map(|(_, r)| mark(r.verdict)).collect();
            cells.push(if row.flaky() {
                format!("{marks}  flaky")
            } else {
                marks
            });
        }
        cells.push(reason);
        table.push(cells);
    }
    let mut out = layout(&table);

    for run in runs {
        if let Some((kind, message)) = &run.error {
            // Already the reason of every VM (a build or target error).
            if run.vms.iter().all(|v| &v.reason == message) {
                continue;
            }
            let at = if repeated {
                format!("{}, attempt {}", run.image, run.attempt)
            } else {
                run.image.clone()
            };
            out.push_str(&format!("{at}: run error ({kind}): {message}\n"));
        }
    }
    let all = runs.iter().flat_map(|r| &r.vms);
    let count = |v: Verdict| all.clone().filter(|r| r.verdict == v).count();
    let mut totals = format!(
        "{} passed, {} failed, {} errors",
        count(Verdict::Pass),
        count(Verdict::Failure),
        count(Verdict::Error)
    );
    let flaky = rows.iter().filter(|r| r.flaky()).count();
    if flaky > 0 {
        totals.push_str(&format!(", {flaky} flaky"));
    }
    if interrupted {
        totals.push_str(" (interrupted)");
    }
    out.push_str(&totals);
    out.push('\n');
    out
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn layout(table: &[Vec<String>]) -> String {
    let columns = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            table
                .iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let w = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `-` for a VM that never ran.
fn secs_short(d: Duration) -> String {
    if d.is_zero() {
        "-".to_string()
    } else {
        secs(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::console::Excerpt;
    use crate::harness::judge::VmResult;
    use std::time::SystemTime;

    fn run(attempt: u32, attempts: u32, verdicts: &[(&str, Verdict, &str)]) -> RunOutcome {
        RunOutcome {
            image: "edu".into(),
            target: "qemu".into(),
            attempt,
            attempts,
            started: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(9),
            properties: Vec::new(),
            vms: verdicts
                .iter()
                .map(|(name, verdict, reason)| VmResult {
                    name: name.to_string(),
                    verdict: *verdict,
                    kind: String::new(),
                    reason: reason.to_string(),
                    time: Duration::from_millis(1500 + 1000 * attempt as u64),
                    code: None,
                    excerpt: Excerpt::new(0),
                })
                .collect(),
            error: None,
            tail: Vec::new(),
        }
    }

    #[test]
    fn one_attempt() {
        let runs = [run(
            1,
            1,
            &[
                ("edu", Verdict::Pass, ""),
                ("dma", Verdict::Failure, "it exited with code 3"),
            ],
        )];
        assert_eq!(
            summary(&runs, false),
            "IMAGE  VM   VERDICT  TIME  REASON\n\
             edu    edu  pass     2.5s\n\
             edu    dma  fail     2.5s  it exited with code 3\n\
             1 passed, 1 failed, 0 errors\n"
        );
    }

    #[test]
    fn repeated_attempts_show_flakiness() {
        let mut second = run(2, 3, &[("edu", Verdict::Failure, "it exited with code 3")]);
        second.error = Some(("run-timeout".into(), "the run timed out after 60s".into()));
        let runs = [
            run(1, 3, &[("edu", Verdict::Pass, "")]),
            second,
            run(3, 3, &[("edu", Verdict::Pass, "")]),
        ];
        assert_eq!(
            summary(&runs, true),
            "IMAGE  VM   VERDICT  TIME  ATTEMPTS    REASON\n\
             edu    edu  fail     3.5s  .F.  flaky  attempt 2: it exited with code 3\n\
             edu, attempt 2: run error (run-timeout): the run timed out after 60s\n\
             2 passed, 1 failed, 0 errors, 1 flaky (interrupted)\n"
        );
    }
}
