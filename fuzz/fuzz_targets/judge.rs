//! The verdict state machine of `kiln test`, fed any sequence of console
//! lines, clock ticks, a closing console and aborts, for VMs with any
//! expectations and timeouts (as a VM config may give them).
#![no_main]

use kiln::harness::console::clean;
use kiln::harness::judge::{Judge, RunError, Verdict, VmPlan};
use kiln_schema::config::{Duration as CfgDuration, TestExpectations};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

const NAMES: [&str; 4] = ["hello", "edu", "linux-1", "x"];
const PATTERNS: [&str; 6] = [
    "exit 0",
    "^hello",
    "ASSERT",
    "DMA mismatch",
    "pci .* 1234:11e8",
    ".",
];
const STATES: [&str; 6] = [
    "starting",
    "running",
    "exited",
    "failed",
    "restarting",
    "bogus",
];

#[derive(Arbitrary, Debug)]
struct Plan {
    name: u8,
    expect: Vec<u8>,
    fail: Vec<u8>,
    timeout: Option<Duration>,
}

#[derive(Arbitrary, Debug)]
enum Event {
    /// Raw console bytes, cleaned as the harness cleans them.
    Raw(Vec<u8>),
    /// A piece continuing the line before it (cut at the length limit).
    Continued(Vec<u8>),
    /// A status line of a VM.
    Status {
        vm: u8,
        state: u8,
        code: Option<i32>,
        reason: Option<String>,
        prefix: Option<String>,
    },
    /// A line of a VM, with the `[vm] ` prefix.
    Prefixed {
        vm: u8,
        text: String,
    },
    Done {
        ok: u32,
        failed: u32,
    },
    /// Time passes (milliseconds).
    Tick(u32),
    Closed,
    Abort,
}

#[derive(Arbitrary, Debug)]
struct Input {
    plans: Vec<Plan>,
    boot_timeout: Duration,
    run_timeout: Duration,
    events: Vec<Event>,
}

fn name(i: u8) -> &'static str {
    NAMES[usize::from(i) % NAMES.len()]
}

fn patterns(indices: &[u8]) -> Vec<String> {
    indices
        .iter()
        .take(4)
        .map(|&i| PATTERNS[usize::from(i) % PATTERNS.len()].to_string())
        .collect()
}

thread_local! {
    /// Compiled plans by their (name, expect, fail) patterns: compiling a
    /// regex costs far more than judging a console, so each is built once.
    static PLANS: RefCell<HashMap<(u8, Vec<String>, Vec<String>), VmPlan>> =
        RefCell::new(HashMap::new());
}

fn plan(p: &Plan) -> VmPlan {
    let (expect, fail) = (patterns(&p.expect), patterns(&p.fail));
    let timeout = p.timeout.map(CfgDuration);
    let key = (p.name % NAMES.len() as u8, expect.clone(), fail.clone());
    let mut plan = PLANS.with(|cache| {
        cache
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                let test = TestExpectations {
                    expect,
                    fail,
                    timeout: None,
                };
                VmPlan::new(name(p.name), &test).expect("the patterns are valid")
            })
            .clone()
    });
    // As VmPlan::new takes it from the config.
    if let Some(t) = timeout {
        plan.timeout = t.get();
    }
    plan
}

fuzz_target!(|input: Input| {
    let plans: Vec<VmPlan> = input.plans.iter().take(4).map(plan).collect();
    let planned = plans.len();
    let mut judge = Judge::new(plans, input.boot_timeout, input.run_timeout);
    let mut at = Duration::ZERO;
    for event in input.events.iter().take(64) {
        let line = match event {
            Event::Raw(bytes) => Some(clean(bytes)),
            Event::Status {
                vm,
                state,
                code,
                reason,
                prefix,
            } => {
                let mut l = format!(
                    "{}kiln: vm={} state={}",
                    prefix.as_deref().unwrap_or(""),
                    name(*vm),
                    STATES[usize::from(*state) % STATES.len()]
                );
                if let Some(c) = code {
                    l.push_str(&format!(" code={c}"));
                }
                if let Some(r) = reason {
                    l.push_str(&format!(" reason={r}"));
                }
                Some(clean(l.as_bytes()))
            }
            Event::Prefixed { vm, text } => {
                Some(clean(format!("[{}] {text}", name(*vm)).as_bytes()))
            }
            Event::Done { ok, failed } => {
                Some(format!("kiln: appliance done ok={ok} failed={failed}"))
            }
            Event::Continued(bytes) => {
                judge.continued(&clean(bytes), at);
                None
            }
            Event::Tick(ms) => {
                at = at.saturating_add(Duration::from_millis(u64::from(*ms)));
                judge.tick(at);
                None
            }
            Event::Closed => {
                judge.console_closed("fuzzed");
                None
            }
            Event::Abort => {
                judge.abort(RunError::Interrupted);
                None
            }
        };
        if let Some(line) = line {
            judge.line(&line, at);
        }
    }
    let j = judge.finish(at);
    assert!(j.vms.len() >= planned, "a planned VM lost its verdict");
    for vm in &j.vms {
        assert_eq!(vm.verdict == Verdict::Pass, vm.kind.is_empty(), "{vm:?}");
    }
});
