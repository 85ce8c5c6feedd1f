//! `kiln test` never leaves a process behind: QEMU, and a lab's console
//! and power commands, end with kiln when it is interrupted twice in a row
//! (and it still writes its report) or killed with SIGKILL.
//!
//! Every process of a run is found through /proc by a variable only that
//! run's processes carry in their environment (kiln passes its own on).

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{kiln, require_qemu, root};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable that marks a run's processes.
const MARK: &str = "KILN_SIGNALS_TEST_RUN";

/// The hello image, built once for all the tests of this file.
fn hello() -> PathBuf {
    static HELLO: OnceLock<PathBuf> = OnceLock::new();
    HELLO
        .get_or_init(|| {
            let out = kiln_tests::images::scratch("harness_signals").join("hello");
            kiln_tests::images::build(&root().join("images/hello.toml"), &out);
            out
        })
        .clone()
}

/// A live process of a marked run.
struct Proc {
    pid: i32,
    comm: String,
    cmdline: String,
}

/// The live (not zombie) processes whose environment holds `MARK=mark`.
fn marked(mark: &Path) -> Vec<Proc> {
    let tag = format!("{MARK}={}", mark.display()).into_bytes();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        panic!("/proc is not mounted")
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let path = entry.path();
        // Gone meanwhile, or another user's: not this run's.
        let Ok(environ) = std::fs::read(path.join("environ")) else {
            continue;
        };
        if !environ.split(|b| *b == 0).any(|v| v == tag.as_slice()) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        if state.starts_with('Z') || state.is_empty() {
            continue;
        }
        let read = |f: &str| {
            let bytes = std::fs::read(path.join(f)).unwrap_or_default();
            String::from_utf8_lossy(&bytes)
                .replace('\0', " ")
                .trim()
                .to_string()
        };
        found.push(Proc {
            pid,
            comm: read("comm"),
            cmdline: read("cmdline"),
        });
    }
    found
}

/// Waits up to `limit` for `done` to hold of the run's processes; the
/// processes it last saw.
fn wait_marked(mark: &Path, limit: Duration, done: impl Fn(&[Proc]) -> bool) -> (bool, Vec<Proc>) {
    let deadline = Instant::now() + limit;
    loop {
        let procs = marked(mark);
        if done(&procs) {
            return (true, procs);
        }
        if Instant::now() >= deadline {
            return (false, procs);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line per process, for failure messages.
fn describe(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("  {} {}: {}\n", p.pid, p.comm, p.cmdline))
        .collect()
}

fn is_qemu(p: &Proc) -> bool {
    p.comm.starts_with("qemu-system")
}

/// `kiln test IMAGE --junit DIR/r.xml ARGS`, started in `dir`, its
/// processes marked with `dir`, its output in `dir/kiln.out`.
fn start_kiln_test(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Child {
    let out = std::fs::File::create(dir.join("kiln.out")).expect("create kiln.out");
    let mut cmd = Command::new(kiln());
    cmd.current_dir(dir)
        .arg("test")
        .arg(hello())
        .arg("--junit")
        .arg(dir.join("r.xml"))
        .args(args)
        .env(MARK, dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup kiln.out"))
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("kiln starts")
}

fn output(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("kiln.out")).unwrap_or_default()
}

/// Waits for kiln to exit; its exit code (`None`: killed by a signal).
fn wait_exit(kiln: &mut Child, dir: &Path, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = kiln.try_wait().expect("wait for kiln") {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = kiln.kill();
            let _ = kiln.wait();
            panic!("kiln did not exit within {limit:?}:\n{}", output(dir));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(kiln: &Child, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(kiln.id()).expect("a pid"));
    kill(pid, sig).expect("signal kiln");
}

/// Two Ctrl-C 10 ms apart: the second used to make kiln exit at once,
/// leaving QEMU running and no report.
fn interrupt_twice(kiln: &Child) {
    signal(kiln, Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(10));
    signal(kiln, Signal::SIGINT);
}

/// Asserts no process of the run (but `spared`) is left within 2 s.
fn assert_none_left(dir: &Path, spared: &[i32]) {
    let (ok, mut left) = wait_marked(dir, Duration::from_secs(2), |procs| {
        procs.iter().all(|p| spared.contains(&p.pid))
    });
    left.retain(|p| !spared.contains(&p.pid));
    for p in &left {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
    assert!(
        ok,
        "processes outlived kiln:\n{}kiln said:\n{}",
        describe(&left),
        output(dir)
    );
}

/// Starts `kiln test` on the emulated target and waits for its QEMU.
fn kiln_with_qemu(dir: &Path) -> Child {
    require_qemu();
    let _ = hello();
    let mut kiln = start_kiln_test(dir, &[], &[]);
    let (up, procs) = wait_marked(dir, Duration::from_secs(120), |p| p.iter().any(is_qemu));
    if !up {
        let _ = kiln.kill();
        panic!("QEMU never started:\n{}{}", describe(&procs), output(dir));
    }
    kiln
}

#[test]
fn a_double_ctrl_c_stops_qemu_and_still_writes_the_report() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut kiln = kiln_with_qemu(d.path());
    interrupt_twice(&kiln);
    let code = wait_exit(&mut kiln, d.path(), Duration::from_secs(30));
    assert_eq!(code, Some(130), "{}", output(d.path()));
    assert_none_left(d.path(), &[]);
    let xml = std::fs::read_to_string(d.path().join("r.xml"))
        .unwrap_or_else(|e| panic!("no report after Ctrl-C ({e}):\n{}", output(d.path())));
    assert!(xml.contains("type=\"interrupted\""), "{xml}");
    assert!(d.path().join("r.xml.console.log").is_file());
}

#[test]
fn qemu_dies_with_a_killed_kiln() {
    let d = tempfile::tempdir().expect("tempdir");
    let mut kiln = kiln_with_qemu(d.path());
    signal(&kiln, Signal::SIGKILL);
    assert_eq!(
        wait_exit(&mut kiln, d.path(), Duration::from_secs(10)),
        None
    );
    assert_none_left(d.path(), &[]);
}

/// A lab file for the fake QEMU lab (tests/lab/fake-qemu) whose console is
/// a pipeline: its second command has no death signal of its own.
fn piped_console_lab(dir: &Path) -> PathBuf {
    let fake = root().join("tests/lab/fake-qemu");
    let fake = fake.display();
    let lab = dir.join("piped.toml");
    std::fs::write(
        &lab,
        format!(
            "boot_timeout = \"2m\"\n\
             [deploy]\ncommand = \"'{fake}' deploy\"\n\
             [power_on]\ncommand = \"'{fake}' power_on\"\n\
             [power_off]\ncommand = \"'{fake}' power_off\"\n\
             [console]\ncommand = \"'{fake}' console | cat\"\n"
        ),
    )
    .expect("write the lab file");
    lab
}

/// Starts `kiln test` on the fake lab and waits for its machine to be on
/// and the console pipeline to run.
fn kiln_on_the_lab(dir: &Path) -> (Child, PathBuf) {
    require_qemu();
    let _ = hello();
    let lab = piped_console_lab(dir);
    let state = dir.join("lab");
    let mut kiln = start_kiln_test(
        dir,
        &["--target", &lab.to_string_lossy()],
        &[("FAKE_LAB_DIR", &state)],
    );
    let (up, procs) = wait_marked(dir, Duration::from_secs(120), |p| {
        p.iter().any(is_qemu)
            && p.iter().any(|p| p.comm == "cat")
            && p.iter().any(|p| p.comm == "tail")
            && state.join("qemu.pid").is_file()
    });
    if !up {
        let _ = kiln.kill();
        power_off(&state);
        panic!(
            "the lab machine never booted:\n{}{}",
            describe(&procs),
            output(dir)
        );
    }
    (kiln, state)
}

fn power_off(state: &Path) {
    let _ = Command::new(root().join("tests/lab/fake-qemu"))
        .arg("power_off")
        .env("FAKE_LAB_DIR", state)
        .status();
}

#[test]
fn a_double_ctrl_c_on_a_lab_still_powers_off_and_writes_the_report() {
    let d = tempfile::tempdir().expect("tempdir");
    let (mut kiln, state) = kiln_on_the_lab(d.path());
    interrupt_twice(&kiln);
    let code = wait_exit(&mut kiln, d.path(), Duration::from_secs(30));
    let machine_off = !state.join("qemu.pid").exists();
    power_off(&state);
    assert_eq!(code, Some(130), "{}", output(d.path()));
    assert!(machine_off, "power_off did not run:\n{}", output(d.path()));
    assert_none_left(d.path(), &[]);
    let xml = std::fs::read_to_string(d.path().join("r.xml"))
        .unwrap_or_else(|e| panic!("no report after Ctrl-C ({e}):\n{}", output(d.path())));
    assert!(xml.contains("type=\"interrupted\""), "{xml}");
}

#[test]
fn lab_commands_die_with_a_killed_kiln() {
    let d = tempfile::tempdir().expect("tempdir");
    let (mut kiln, state) = kiln_on_the_lab(d.path());
    let machine: i32 = std::fs::read_to_string(state.join("qemu.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("the lab machine's pid");
    signal(&kiln, Signal::SIGKILL);
    assert_eq!(
        wait_exit(&mut kiln, d.path(), Duration::from_secs(10)),
        None
    );
    // The machine stays on, as a real one would: only power_off stops it.
    let left = std::panic::catch_unwind(|| assert_none_left(d.path(), &[machine]));
    power_off(&state);
    if let Err(e) = left {
        std::panic::resume_unwind(e);
    }
}
