//! Hostile consoles, judged live and replayed: a guest that forges runtime
//! lines by every route (whole line, mid-line, after a `\r`, over-long,
//! escape sequences, an unknown VM, a fake host panic, a fake `appliance
//! done`) gets no say over its sibling's verdict or the run's end, and the
//! judge reaches the same verdicts on the console as it comes (in chunks of
//! any size) and on `--target replay:` of the console log it recorded.

use super::console::MAX_LINE;
use super::targets::{Console, Deployable, Target, TargetError, TargetSpec};
use super::*;
use crate::manifest::{Artifact, KernelInfo, ManifestVm};
use kiln_schema::config::TestExpectations;
use std::io::Write;

/// A target whose console is `bytes`, written in `chunk`-byte writes.
struct Live {
    bytes: Vec<u8>,
    chunk: usize,
}

impl Target for Live {
    fn name(&self) -> &str {
        "live"
    }

    fn deploy(&mut self, _image: &Deployable) -> Result<(), TargetError> {
        Ok(())
    }

    fn boot(&mut self, _image: &Deployable) -> Result<Console, TargetError> {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let bytes = self.bytes.clone();
        let chunk = self.chunk;
        std::thread::spawn(move || {
            for piece in bytes.chunks(chunk) {
                if writer.write_all(piece).is_err() {
                    return;
                }
            }
        });
        Ok(Box::new(reader))
    }

    fn stop(&mut self) -> Result<(), TargetError> {
        Ok(())
    }
}

/// An image of two VMs: `sibling`, which really fails (code 3), and
/// `forger`, the hostile one, which really exits 0.
fn image(root: &Path) -> PathBuf {
    let dir = root.join("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let test = |expect: &str| TestExpectations {
        expect: vec![expect.to_string()],
        ..Default::default()
    };
    let m = Manifest {
        name: "hostile".into(),
        kiln_version: "0".into(),
        source_date_epoch: 0,
        kernel: KernelInfo {
            release: "6.1.0-test".into(),
            source: "test".into(),
            package: None,
            version: None,
            packages: Vec::new(),
            apt_sources: Vec::new(),
        },
        cmdline: String::new(),
        compression: "zstd".into(),
        artifacts: vec![Artifact {
            file: "initramfs.cpio.zst".into(),
            size: 1,
            sha256: "d1".into(),
        }],
        modules: Vec::new(),
        payloads: Vec::new(),
        inputs: Vec::new(),
        target: None,
        vms: [("sibling", "sibling: working"), ("forger", "forger: up")]
            .iter()
            .map(|(name, expect)| ManifestVm {
                name: name.to_string(),
                test: test(expect),
            })
            .collect(),
        uki: None,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string(&m).unwrap(),
    )
    .unwrap();
    dir
}

/// The runtime's lines before and after the forger's output.
fn console(forger_lines: &[Vec<u8>], end: &[&str]) -> Vec<u8> {
    let mut out = b"Linux version 6.1.0\r\n\
        kiln: vm=sibling state=starting\r\n\
        kiln: vm=forger state=starting\r\n\
        [forger] forger: up\r\n"
        .to_vec();
    for line in forger_lines {
        out.extend_from_slice(b"[forger] ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"[sibling] sibling: working\r\n");
    for line in end {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Forger text that fills its line up to the harness's cut, then `tail`:
/// the piece after the cut starts with `tail`.
fn over_long(tail: &str) -> Vec<u8> {
    let mut line = vec![b'x'; MAX_LINE - "[forger] ".len()];
    line.extend_from_slice(tail.as_bytes());
    line
}

/// What a run says about each VM and about itself (the time aside).
type Verdicts = (
    Vec<(String, Verdict, String, String, Option<i32>)>,
    Option<String>,
);

fn verdicts(report: &Report) -> Verdicts {
    let run = &report.runs[0];
    let vms = run
        .vms
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.verdict,
                v.kind.clone(),
                v.reason.clone(),
                v.code,
            )
        })
        .collect();
    (vms, run.error.as_ref().map(|e| e.0.clone()))
}

/// Judges `bytes` live, in writes of `chunk` bytes, then replays the
/// console log that run recorded; asserts both reach the same verdicts
/// and returns them.
fn live_and_replayed(bytes: &[u8], chunk: usize) -> Verdicts {
    let d = tempfile::tempdir().unwrap();
    let dir = image(d.path());
    let options = |junit: PathBuf, target: TargetSpec| Options {
        inputs: vec![dir.clone()],
        junit: Some(junit),
        repeat: 1,
        target,
        timeout: None,
        boot_timeout: None,
        echo: false,
    };
    let junit = d.path().join("live.xml");
    let live_target = Live {
        bytes: bytes.to_vec(),
        chunk,
    };
    let live = run_on(
        &options(junit.clone(), TargetSpec::Replay("unused".into())),
        Ok(Box::new(live_target)),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let log = console_log_path(&junit);
    let recorded = std::fs::read(&log).unwrap();
    let header = b"attempt 1 of 1 =====\n";
    let at = recorded
        .windows(header.len())
        .position(|w| w == header)
        .unwrap();
    let console = &recorded[at + header.len()..];
    assert!(
        !console.is_empty() && bytes.starts_with(console),
        "the log holds the console byte for byte, as far as the run read it"
    );
    let replayed = run(
        &options(d.path().join("replay.xml"), TargetSpec::Replay(log)),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(replayed.runs[0].target, "replay");
    let (live, replayed) = (verdicts(&live), verdicts(&replayed));
    assert_eq!(live, replayed, "live and replayed verdicts differ");
    live
}

/// Each VM's (name, verdict, kind, code), and the run error's kind.
type Summary<'a> = (
    Vec<(&'a str, Verdict, &'a str, Option<i32>)>,
    Option<&'a str>,
);

fn summary(v: &Verdicts) -> Summary<'_> {
    (
        v.0.iter()
            .map(|(n, verdict, kind, _, code)| (n.as_str(), *verdict, kind.as_str(), *code))
            .collect(),
        v.1.as_deref(),
    )
}

const REAL_END: &[&str] = &[
    "kiln: vm=sibling state=exited code=3",
    "kiln: vm=forger state=exited code=0",
    "kiln: appliance done ok=1 failed=1",
];

#[test]
fn forged_status_and_done_lines_change_no_verdict() {
    let forged: Vec<Vec<u8>> = vec![
        // Whole lines, about the sibling, itself, and the appliance.
        b"kiln: vm=sibling state=exited code=0".to_vec(),
        b"kiln: vm=forger state=exited code=0".to_vec(),
        b"kiln: vm sibling: 0000:00:02.0 attached through iommufd".to_vec(),
        // Mid-line.
        b"progress kiln: vm=sibling state=exited code=0".to_vec(),
        // After a bare CR, alone and as a CR of CRLF that is not one.
        b"10%\rkiln: vm=sibling state=exited code=0".to_vec(),
        b"50%\r\rkiln: appliance done ok=2 failed=0\r".to_vec(),
        // Escape sequences that would clear the line on a terminal.
        b"\x1b[2K\x1b[1G\rkiln: vm=sibling state=exited code=0".to_vec(),
        b"\x1b]0;kiln: vm=sibling state=exited code=0\x07kiln: appliance done ok=2 failed=0"
            .to_vec(),
        // Over-long: the piece after the cut starts with the forgery.
        over_long("kiln: vm=sibling state=exited code=0"),
        over_long("kiln: appliance done ok=2 failed=0"),
        // A VM the image does not have.
        b"kiln: vm=ghost state=exited code=0".to_vec(),
        // The fake end of the run.
        b"kiln: appliance done ok=2 failed=0".to_vec(),
    ];
    let mut bytes = console(&forged, &[]);
    // An unknown VM's status line from the runtime side counts for nothing
    // either.
    bytes.extend_from_slice(b"kiln: vm=ghost state=failed code=1\r\n");
    for line in REAL_END {
        bytes.extend_from_slice(format!("{line}\r\n").as_bytes());
    }
    for chunk in [1, 7, 4096] {
        let v = live_and_replayed(&bytes, chunk);
        assert_eq!(
            summary(&v),
            (
                vec![
                    ("sibling", Verdict::Failure, "exit-code", Some(3)),
                    ("forger", Verdict::Pass, "", Some(0)),
                ],
                None
            ),
            "chunks of {chunk}"
        );
    }
}

#[test]
fn a_fake_host_panic_is_the_forgers_own_crash() {
    for forged in [
        b"Kernel panic - not syncing: forged".to_vec(),
        b"[    5.000000] Kernel panic - not syncing: forged".to_vec(),
        b"10%\rKernel panic - not syncing: forged".to_vec(),
        b"\x1b[2K\rOops: 0000 [#1] SMP".to_vec(),
        over_long("BUG: forged"),
    ] {
        let bytes = console(std::slice::from_ref(&forged), REAL_END);
        for chunk in [1, 4096] {
            let v = live_and_replayed(&bytes, chunk);
            assert_eq!(
                summary(&v),
                (
                    // The run reads on to the forger's real end (code 0),
                    // which cannot undo the panic kiln saw.
                    vec![
                        ("sibling", Verdict::Failure, "exit-code", Some(3)),
                        ("forger", Verdict::Failure, "panic", Some(0)),
                    ],
                    None
                ),
                "{:?}, chunks of {chunk}",
                String::from_utf8_lossy(&forged[forged.len().saturating_sub(40)..])
            );
        }
    }
}

#[test]
fn a_real_host_panic_still_ends_the_run() {
    let bytes = console(
        &[],
        &[
            "[    5.123456] Kernel panic - not syncing: Fatal exception",
            "kiln: vm=sibling state=exited code=0",
        ],
    );
    let v = live_and_replayed(&bytes, 7);
    assert_eq!(
        summary(&v),
        (
            vec![
                ("sibling", Verdict::Failure, "panic", None),
                ("forger", Verdict::Failure, "panic", None),
            ],
            Some("host-panic")
        )
    );
}
