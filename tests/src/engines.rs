//! The lab engines kiln's jobs run on, for the end-to-end tests: LAVA's
//! dispatcher (`lava-run`, Debian's `lava-dispatcher`, installed by
//! tests/setup) and labgrid (from PyPI, pinned, into a venv made here), with
//! the parts of a lab they need on one machine: a LAVA server's job check and
//! device-dictionary rendering (tests/lab/lava/lava-server-lite), a labgrid
//! coordinator and exporter on loopback, and a serial console server.
//!
//! Test helpers: they panic with a message that says what to fix. An engine
//! that cannot run here fails the test with the reason; nothing is skipped.

use crate::{root, run_with_timeout, Finished};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The labgrid release the tests install.
pub const LABGRID: &str = "26.0.1";

/// A JUnit testcase: the VM and how it ended (`pass`, or the failure's or
/// error's `type` and `message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    pub outcome: String,
}

/// The testcases of a JUnit report, in order.
pub fn testcases(junit: &str) -> Vec<Case> {
    junit
        .split("<testcase ")
        .skip(1)
        .map(|chunk| {
            let body = chunk.split("</testcase>").next().unwrap_or(chunk);
            let outcome = ["failure", "error"]
                .iter()
                .find_map(|tag| {
                    let at = body.find(&format!("<{tag} "))?;
                    let el = &body[at..];
                    Some(format!(
                        "{tag} {}: {}",
                        attr(el, "type").unwrap_or_default(),
                        attr(el, "message").unwrap_or_default()
                    ))
                })
                .unwrap_or_else(|| "pass".to_string());
            Case {
                name: attr(chunk, "name").unwrap_or_default(),
                outcome,
            }
        })
        .collect()
}

/// The value of the first ` NAME="..."` in `text`.
pub fn attr(text: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = text.find(&key)? + key.len();
    let len = text[start..].find('"')?;
    Some(text[start..start + len].to_string())
}

/// What `kiln test` said about an image on a target.
#[derive(Debug)]
pub struct Judged {
    pub code: Option<i32>,
    /// The JUnit report's path.
    pub report: PathBuf,
    pub cases: Vec<Case>,
    pub junit: String,
    pub run: Finished,
}

/// `kiln test DIR --target TARGET --junit JUNIT`, with `env` added to its
/// environment, bounded in time.
pub fn kiln_test(dir: &Path, target: &str, junit: &Path, env: &[(&str, String)]) -> Judged {
    let junit_path = junit;
    let mut cmd = Command::new(crate::kiln());
    cmd.arg("test")
        .arg(dir)
        .arg("--target")
        .arg(target)
        .arg("--junit")
        .arg(junit);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = run_with_timeout(cmd, Duration::from_secs(600));
    assert!(
        !run.timed_out,
        "kiln test --target {target} hung:\n{}",
        run.output
    );
    let junit = std::fs::read_to_string(junit).unwrap_or_else(|e| {
        panic!(
            "kiln test --target {target} wrote no {}: {e}\n{}",
            junit.display(),
            run.output
        )
    });
    Judged {
        code: run.code(),
        report: junit_path.to_path_buf(),
        cases: testcases(&junit),
        junit,
        run,
    }
}

/// Asserts `got` (through a lab engine) says what `want` (the emulated
/// target) said: exit code and every testcase's outcome, in a report that
/// validates against kiln's JUnit schema (tests/data/junit.xsd).
pub fn assert_same_verdicts(engine: &str, got: &Judged, want: &Judged) {
    let xsd = root().join("tests/data/junit.xsd");
    let lint = Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(&xsd)
        .arg(&got.report)
        .output()
        .unwrap_or_else(|e| panic!("xmllint cannot run ({e}): run tests/setup"));
    assert!(
        lint.status.success(),
        "{engine}'s report does not validate:\n{}",
        String::from_utf8_lossy(&lint.stderr)
    );
    assert_eq!(
        (got.code, &got.cases),
        (want.code, &want.cases),
        "{engine} disagrees with the emulated target\n--- {engine}:\n{}\n{}\n--- qemu:\n{}\n{}",
        got.run.output,
        got.junit,
        want.run.output,
        want.junit
    );
}

/// A command's output, the test failing with it when the command fails.
pub fn run_ok(cmd: Command, what: &str, timeout: Duration) -> Finished {
    let run = run_with_timeout(cmd, timeout);
    assert!(
        !run.timed_out && run.code() == Some(0),
        "{what} failed ({:?}, after {:.0?}):\n{}",
        run.status,
        run.elapsed,
        run.output
    );
    run
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `lava-run` on this machine, or the reason it cannot run.
pub fn require_lava() {
    let have = |p: &str| Path::new(p).is_file();
    assert!(
        have("/usr/bin/lava-run"),
        "LAVA's dispatcher is not installed: run tests/setup (apt-get install -y --no-install-recommends lava-dispatcher)"
    );
    assert!(
        have("/usr/share/lava-server/device-types/qemu.jinja2"),
        "LAVA's device-type templates are missing: run tests/setup (it extracts them from the lava-server package)"
    );
}

/// What a LAVA server does before a worker runs `job` on the device
/// `device` (a dictionary in tests/lab/lava/devices): the job checked
/// against LAVA's schema and the dictionary rendered with the job's context
/// (tests/lab/lava/lava-server-lite). Returns the device configuration
/// `lava-run` takes, written in `work`.
pub fn lava_device(job: &Path, device: &str, work: &Path) -> PathBuf {
    require_lava();
    std::fs::create_dir_all(work).expect("create the LAVA work folder");
    let lab = root().join("tests/lab/lava");
    let rendered = Command::new(lab.join("lava-server-lite"))
        .arg(job)
        .arg(lab.join("devices"))
        .arg(device)
        .stdin(Stdio::null())
        .output()
        .expect("lava-server-lite starts");
    assert!(
        rendered.status.success(),
        "LAVA refuses the job {} or the device {device}:\n{}",
        job.display(),
        String::from_utf8_lossy(&rendered.stderr)
    );
    let config = work.join(format!("{device}.yaml"));
    std::fs::write(&config, &rendered.stdout).expect("write the device configuration");
    config
}

/// How `lava-run` is to take a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LavaRun {
    /// Run it.
    Run,
    /// Only build and validate its pipeline on the device (`--validate`).
    Validate,
}

/// Runs (or validates) the LAVA job `job` on the device `device` as a LAVA
/// lab would: [`lava_device`], then `lava-run`. Returns the job's log:
/// `lava-run`'s records, one a line (what a server keeps in output.yaml as
/// `- {...}`), in `work`.
pub fn lava_run(job: &Path, device: &str, work: &Path, how: LavaRun) -> PathBuf {
    let config = lava_device(job, device, work);
    static JOBS: Mutex<u32> = Mutex::new(0);
    let n = {
        let mut n = JOBS.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        *n
    };
    let log = work.join(format!("lava-run-{device}.log"));
    let out = std::fs::File::create(&log).expect("create the LAVA log");
    let started = Instant::now();
    let mut cmd = Command::new("lava-run");
    if how == LavaRun::Validate {
        cmd.arg("--validate");
    }
    let status = cmd
        .arg("--job-id")
        .arg(format!("kiln-{}-{n}", std::process::id()))
        .arg("--output-dir")
        .arg(work.join(format!("out-{n}")))
        .arg("--device")
        .arg(&config)
        .arg(job)
        .stdin(Stdio::null())
        // lava-run logs its records on stderr.
        .stdout(out.try_clone().expect("clone the LAVA log"))
        .stderr(out)
        .status()
        .expect("lava-run starts");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "lava-run {} on {device} failed ({status}):\n{}",
        job.display(),
        last_lines(&text, 40)
    );
    eprintln!(
        "lava-run{} {} on {device}: {:.1} s",
        if how == LavaRun::Validate {
            " --validate"
        } else {
            ""
        },
        job.display(),
        started.elapsed().as_secs_f64()
    );
    log
}

/// The `bin` folder of a venv with labgrid [`LABGRID`] from PyPI, made once
/// (in the workspace's target folder) with the `python3` on PATH.
pub fn labgrid_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let venv = root().join(format!("target/labgrid-venv-{LABGRID}"));
        let bin = venv.join("bin");
        // Written last: a venv without it is from an install that failed.
        let done = venv.join("kiln-installed");
        if done.is_file() {
            return bin;
        }
        let started = Instant::now();
        let _ = std::fs::remove_dir_all(&venv);
        let mut mk = Command::new("python3");
        mk.args(["-m", "venv"]).arg(&venv);
        run_ok(
            mk,
            "python3 -m venv (install python3-venv: run tests/setup)",
            Duration::from_secs(300),
        );
        let mut pip = Command::new(bin.join("pip"));
        pip.args([
            "install",
            "--disable-pip-version-check",
            "--quiet",
            &format!("labgrid=={LABGRID}"),
        ]);
        run_ok(
            pip,
            &format!("pip install labgrid=={LABGRID} (from PyPI)"),
            Duration::from_secs(600),
        );
        std::fs::write(&done, LABGRID).expect("mark the venv complete");
        eprintln!(
            "labgrid {LABGRID} installed into {} in {:.1} s",
            venv.display(),
            started.elapsed().as_secs_f64()
        );
        bin
    })
    .clone()
}

/// PATH with labgrid's venv first, for kiln and labgrid's commands.
pub fn path_with(bin: &Path) -> String {
    let rest = std::env::var("PATH").unwrap_or_default();
    format!("{}:{rest}", bin.display())
}

/// A free TCP port on loopback (free when asked: the caller binds it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A process the test started, killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).expect("create a daemon log");
        let err = out.try_clone().expect("clone a daemon log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} cannot start: {e}"));
        Daemon { name, child, log }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test when it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(s)) = self.child.try_wait() {
            panic!("{} exited ({s}):\n{}", self.name, self.output());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries `check` until it is true, or fails after `limit` with `what`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A console server on loopback, as a lab's ser2net: the board's serial
/// line connects to `board_port` (QEMU's `-serial tcp:...`), the lab's
/// clients (labgrid's `NetworkSerialPort`) to `client_port`; what the board
/// sends goes to the client connected then, as on a real UART. It serves
/// for the test process's life.
#[derive(Debug)]
pub struct ConsoleServer {
    pub client_port: u16,
    pub board_port: u16,
}

impl ConsoleServer {
    pub fn start() -> ConsoleServer {
        let clients = TcpListener::bind("127.0.0.1:0").expect("bind the console port");
        let boards = TcpListener::bind("127.0.0.1:0").expect("bind the board port");
        let client_port = clients.local_addr().expect("address").port();
        let board_port = boards.local_addr().expect("address").port();
        let client: Arc<Mutex<Option<TcpStream>>> = Arc::new(Mutex::new(None));
        let latest = client.clone();
        std::thread::spawn(move || {
            for c in clients.incoming().flatten() {
                *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
            }
        });
        std::thread::spawn(move || {
            for mut board in boards.incoming().flatten() {
                let mut buf = [0u8; 4096];
                while let Ok(n) = board.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(s) = c.as_mut() {
                        if s.write_all(&buf[..n]).is_err() {
                            *c = None;
                        }
                    }
                }
            }
        });
        ConsoleServer {
            client_port,
            board_port,
        }
    }
}
