//! LAVA's job log read back as a console, so kiln judges a job LAVA ran.
//!
//! The log is one YAML record a line, `{"dt": ..., "lvl": ..., "msg": ...}`
//! as `lava-run` prints it, or `- {...}` as the server keeps it in
//! `output.yaml` (plain or xz-compressed). The device's serial output is in
//! the records of level `target` (and `feedback`, what LAVA read between
//! actions), one console line each. Before logging a line LAVA removed its
//! carriage returns and ESC bytes and escaped its double quotes; the quotes
//! are restored here. LAVA's own results (`lvl: results`) are kept as facts
//! for the report, never as verdicts.
//!
//! Each record has its time (`dt`), so the console keeps its clock: a line's
//! time counts from the start of the job's second top-level action (the
//! boot, in a job `kiln lava-job` wrote: QEMU starts, or the board is
//! powered on), or from the first console line in a log without one. LAVA
//! stamps a line when it reads it, within moments of the device writing it.

use chrono::NaiveDateTime;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::io::Read;
use std::time::Duration;

/// xz's magic bytes, for `output.yaml.xz`.
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";

#[derive(Debug, thiserror::Error)]
pub enum LavaLogError {
    #[error("cannot decompress the xz-compressed LAVA log")]
    Xz(#[source] std::io::Error),
    #[error("no line is a LAVA log record ({{\"dt\": ..., \"lvl\": ..., \"msg\": ...}}); expected LAVA's output.yaml or lava-run's output")]
    NoRecords,
}

/// What kiln takes from a LAVA log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LavaLog {
    /// The device's console, a line per record.
    pub console: Vec<u8>,
    /// The same lines (without their `\n`), each with its time since the
    /// power-on.
    pub timeline: Vec<(Duration, Vec<u8>)>,
    /// LAVA's results, in order: (definition, case, result).
    pub results: Vec<(String, String, String)>,
    /// Lines that were not records (a truncated last line, other output).
    pub skipped: usize,
}

impl LavaLog {
    /// LAVA's result for the whole job (`lava`/`job`), if it got that far.
    pub fn job_result(&self) -> Option<&str> {
        self.results
            .iter()
            .rev()
            .find(|(d, c, _)| d == "lava" && c == "job")
            .map(|(_, _, r)| r.as_str())
    }
}

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    dt: Option<String>,
    lvl: String,
    #[serde(default)]
    msg: Value,
}

/// LAVA's record time: UTC, ISO 8601 without a zone.
fn time_of(dt: Option<&str>) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(dt?, "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// Whether `msg` starts a top-level action (`start: 2 boot-image-retry`).
fn starts_top_level_action(msg: &str) -> bool {
    msg.strip_prefix("start: ")
        .and_then(|rest| rest.split_once(' '))
        .is_some_and(|(level, _)| !level.is_empty() && level.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `head`, the first bytes of a file, start a LAVA log.
pub fn is_lava_log(head: &[u8]) -> bool {
    if head.starts_with(XZ_MAGIC) {
        return true;
    }
    let text = String::from_utf8_lossy(head);
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    first.is_some_and(|l| {
        let l = l.strip_prefix("- ").unwrap_or(l);
        l.starts_with("{\"dt\": ") || l.starts_with("{dt: ")
    })
}

/// Decompresses `bytes` when they are xz.
pub fn decompress(bytes: Vec<u8>) -> Result<Vec<u8>, LavaLogError> {
    if !bytes.starts_with(XZ_MAGIC) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    xz2::read::XzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .map_err(LavaLogError::Xz)?;
    Ok(out)
}

/// Reads a LAVA log (plain or xz).
pub fn parse(bytes: Vec<u8>) -> Result<LavaLog, LavaLogError> {
    let bytes = decompress(bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut log = LavaLog::default();
    let mut records = 0usize;
    let mut top_level_starts = 0usize;
    let mut power_on = None;
    // Console lines with their record's time (a record without one takes
    // the time before it).
    let mut lines: Vec<(Option<NaiveDateTime>, String)> = Vec::new();
    let mut last_time = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let body = line.strip_prefix("- ").unwrap_or(line);
        let Ok(rec) = serde_yaml_ng::from_str::<Record>(body) else {
            log.skipped += 1;
            continue;
        };
        records += 1;
        last_time = time_of(rec.dt.as_deref()).or(last_time);
        match (rec.lvl.as_str(), &rec.msg) {
            ("target" | "feedback", Value::String(msg)) => {
                lines.push((last_time, msg.replace("\\\"", "\"")));
            }
            ("results", Value::Mapping(_)) => {
                let field = |k: &str| rec.msg[k].as_str().unwrap_or_default().to_string();
                log.results
                    .push((field("definition"), field("case"), field("result")));
            }
            (_, Value::String(msg)) if starts_top_level_action(msg) => {
                top_level_starts += 1;
                if top_level_starts == 2 {
                    power_on = last_time;
                }
            }
            _ => {}
        }
    }
    if records == 0 {
        return Err(LavaLogError::NoRecords);
    }
    let t0 = power_on.or_else(|| lines.iter().find_map(|(t, _)| *t));
    for (at, text) in lines {
        let since = match (at, t0) {
            (Some(at), Some(t0)) => (at - t0).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        log.console.extend_from_slice(text.as_bytes());
        log.console.push(b'\n');
        log.timeline.push((since, text.into_bytes()));
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as lava-run 2023.01 printed them for a kiln job (quotes
    /// escaped by LAVA, a YAML tag in a result).
    const RUN: &str = r#"{"dt": "2026-12-06T11:59:33.355170", "lvl": "info", "msg": "lava-dispatcher, installed at version: 2023.01"}
{"dt": "2026-12-06T11:59:33.406195", "lvl": "results", "msg": {"case": "file-download", "definition": "lava", "extra": {"size": ! "14190528"}, "result": "pass"}}
{"dt": "2026-12-06T11:59:44.800000", "lvl": "target", "msg": "kiln: vm=hello state=starting"}
{"dt": "2026-12-06T11:59:44.888188", "lvl": "target", "msg": "[hello] hello: cmdline \\\"hello.exit=0\\\""}
{"dt": "2026-12-06T11:59:45.364219", "lvl": "target", "msg": "kiln: vm=hello state=exited code=0"}
{"dt": "2026-12-06T11:59:45.365003", "lvl": "results", "msg": {"case": "hello", "definition": "kiln-hello", "extra": {"test_case_id": "hello"}, "level": "3.1", "result": "pass"}}
{"dt": "2026-12-06T11:59:45.408425", "lvl": "target", "msg": ""}
{"dt": "2026-12-06T11:59:45.408728", "lvl": "target", "msg": "kiln: appliance done ok=1 failed=0"}
{"dt": "2026-12-06T11:59:45.426077", "lvl": "feedback", "msg": "[    8.422917] reboot: Power down", "ns": "common"}
{"dt": "2026-12-06T11:59:45.447016", "lvl": "input", "msg": "poweroff\n"}
{"dt": "2026-12-06T11:59:45.680308", "lvl": "results", "msg": {"case": "job", "definition": "lava", "result": "pass"}}
"#;

    const CONSOLE: &str = "kiln: vm=hello state=starting\n\
        [hello] hello: cmdline \"hello.exit=0\"\n\
        kiln: vm=hello state=exited code=0\n\
        \n\
        kiln: appliance done ok=1 failed=0\n\
        [    8.422917] reboot: Power down\n";

    #[test]
    fn the_console_is_the_target_lines_with_their_quotes() {
        assert!(is_lava_log(RUN.as_bytes()));
        let log = parse(RUN.as_bytes().to_vec()).unwrap();
        assert_eq!(String::from_utf8(log.console.clone()).unwrap(), CONSOLE);
        assert_eq!(log.job_result(), Some("pass"));
        assert_eq!(
            log.results[1],
            ("kiln-hello".into(), "hello".into(), "pass".into())
        );
        assert_eq!(log.skipped, 0);
    }

    #[test]
    fn lines_keep_their_time_from_the_boot_action() {
        let log = format!(
            "{}\n{}\n{RUN}",
            r#"{"dt": "2026-12-06T11:59:33.405615", "lvl": "info", "msg": "start: 1 deployimages (timeout 00:10:00) [common]"}"#,
            r#"{"dt": "2026-12-06T11:59:34.000000", "lvl": "info", "msg": "start: 2 boot-image-retry (timeout 00:02:00) [common]"}"#,
        );
        let log = parse(log.into_bytes()).unwrap();
        let times: Vec<u128> = log.timeline.iter().map(|(t, _)| t.as_millis()).collect();
        assert_eq!(times, [10800, 10888, 11364, 11408, 11408, 11426]);
        assert_eq!(log.timeline[0].1, b"kiln: vm=hello state=starting");
        // Without a boot action, time counts from the first console line.
        let log = parse(RUN.as_bytes().to_vec()).unwrap();
        assert_eq!(log.timeline[0].0, Duration::ZERO);
        assert_eq!(log.timeline[2].0, Duration::from_micros(564219));
    }

    #[test]
    fn the_servers_output_yaml_and_its_xz_read_the_same() {
        let server: String = RUN.lines().map(|l| format!("- {l}\n")).collect();
        assert!(is_lava_log(server.as_bytes()));
        let plain = parse(RUN.as_bytes().to_vec()).unwrap();
        assert_eq!(parse(server.clone().into_bytes()).unwrap(), plain);

        let mut xz = Vec::new();
        let mut enc = xz2::read::XzEncoder::new(server.as_bytes(), 6);
        enc.read_to_end(&mut xz).unwrap();
        assert!(is_lava_log(&xz));
        assert_eq!(parse(xz).unwrap(), plain);
    }

    #[test]
    fn a_truncated_line_is_skipped_and_a_console_log_is_not_lava() {
        let cut = &RUN[..RUN.len() - 30];
        let log = parse(cut.as_bytes().to_vec()).unwrap();
        assert_eq!(log.skipped, 1);
        assert_eq!(log.job_result(), None);

        let console =
            "===== kiln test: hello on qemu, attempt 1 of 1 =====\nkiln: vm=a state=starting\n";
        assert!(!is_lava_log(console.as_bytes()));
        assert!(!is_lava_log(b""));
        let e = parse(console.as_bytes().to_vec()).unwrap_err().to_string();
        assert!(e.contains("expected LAVA's output.yaml"), "{e}");
    }
}
