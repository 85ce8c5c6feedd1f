//! The reaper: a small process (kiln itself, run as `kiln __reaper`) that
//! kills the process groups kiln was running when kiln dies without ending
//! them (SIGKILL, a crash). The death signal reaches only kiln's direct
//! children; what they started (a pipeline's other commands, a console
//! client's helper) lives on in their group.
//!
//! kiln writes `+PGID` when a group starts and `-PGID` when it has ended
//! to the reaper's input, a pipe only kiln holds. The kernel closes it
//! when kiln exits, however it exits; the reaper then SIGKILLs every group
//! still listed and exits itself.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, PoisonError};

/// The hidden subcommand that runs [`serve`].
pub const SUBCOMMAND: &str = "__reaper";

/// The reaper's input, once it runs.
static REAPER: Mutex<Option<ChildStdin>> = Mutex::new(None);

/// Starts the reaper, kiln's own binary run as [`SUBCOMMAND`].
pub fn start() -> io::Result<()> {
    let mut child = Command::new("/proc/self/exe")
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        // It must not hold kiln's output open after kiln exits, nor a
        // folder busy, nor get the terminal's Ctrl-C.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0)
        .spawn()?;
    // std's pipes are close-on-exec: no other child inherits this end.
    let input = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the reaper has no input pipe"))?;
    *REAPER.lock().unwrap_or_else(PoisonError::into_inner) = Some(input);
    // Never waited for: it exits when kiln does.
    drop(child);
    Ok(())
}

fn tell(line: &str) {
    let mut reaper = REAPER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(input) = reaper.as_mut() {
        if input.write_all(line.as_bytes()).is_err() {
            // Gone: the death signal alone guards kiln's children now.
            *reaper = None;
        }
    }
}

/// Lists the group `pgid` with the reaper, if one runs.
pub(super) fn watch(pgid: Pid) {
    tell(&format!("+{pgid}\n"));
}

/// Takes the group `pgid` off the reaper's list.
pub(super) fn unwatch(pgid: Pid) {
    tell(&format!("-{pgid}\n"));
}

/// The reaper's life: follows `input` to its end, then SIGKILLs every group
/// still listed.
pub fn serve(input: impl BufRead) {
    let mut groups: Vec<i32> = Vec::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let (add, pgid) = match (line.strip_prefix('+'), line.strip_prefix('-')) {
            (Some(n), _) => (true, n),
            (_, Some(n)) => (false, n),
            _ => continue,
        };
        // Never 0 or negative: killpg would reach the reaper's own group.
        let Some(pgid) = pgid.parse::<i32>().ok().filter(|p| *p > 1) else {
            continue;
        };
        groups.retain(|g| *g != pgid);
        if add {
            groups.push(pgid);
        }
    }
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Child;
    use std::time::{Duration, Instant};

    fn group(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn ended(child: &mut Child) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn at_the_end_of_its_input_it_kills_the_groups_still_listed() {
        let mut listed = group("exec sleep 60");
        let mut unlisted = group("exec sleep 60");
        let input = format!(
            "+{}\n+{}\ngarbage\n+0\n-1\n-{}\n",
            listed.id(),
            unlisted.id(),
            unlisted.id()
        );
        serve(io::Cursor::new(input));
        assert!(ended(&mut listed), "a listed group outlived kiln");
        assert!(
            matches!(unlisted.try_wait(), Ok(None)),
            "a group kiln ended was signalled again"
        );
        let _ = unlisted.kill();
        let _ = unlisted.wait();
    }
}
