//! The results table: per setting and VMM the median of each phase over
//! the boots that completed, then the paired ratios the goals of issue #17
//! (or the prefault measurement) are stated in. A pair with a failed boot
//! on either side is left out of a ratio, and the row says how many were.

use crate::measure::Sample;
use crate::stats::{median, paired_ratio, Ratio};
use std::collections::BTreeMap;

/// Every boot, by (setting, VMM), in pair order.
pub type Results = BTreeMap<(String, String), Vec<Sample>>;

/// The phase a ratio compares.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Setup,
    Init,
    Exit,
}

impl Phase {
    fn of(self, s: &Sample) -> Option<f64> {
        match self {
            Phase::Setup => setup_ms(s),
            Phase::Init => s.init_ms,
            Phase::Exit => Some(s.exit_ms),
        }
    }
}

/// One row of the ratio table: `a / b` per pair.
#[derive(Debug, Clone)]
pub struct RatioRow {
    pub what: String,
    pub a: (&'static str, &'static str),
    pub b: (&'static str, &'static str),
    pub phase: Phase,
    pub goal: Option<f64>,
}

/// kiln's setup from its stats line, QEMU's from its trace line.
fn setup_ms(s: &Sample) -> Option<f64> {
    s.setup_ms
        .or_else(|| s.field("kiln-runtime: stats", "setup_ms"))
}

/// The VMM's own peak memory: kiln's `vmm_peak_kib` (its VmHWM less the
/// guest RAM in it); for a VMM without a stats line, its lifetime peak
/// from `ru_maxrss` when that is its own, else its VmHWM as the harness
/// last read it.
pub fn own_peak_kib(s: &Sample) -> Option<f64> {
    s.field("kiln-runtime: stats", "vmm_peak_kib")
        .or(s.lifetime_peak_kib().map(|k| k as f64))
        .or(s.hwm_kib.map(|k| k as f64))
}

pub fn print(results: &Results, ratios: &[RatioRow], kiln_peak_of: Option<(&str, &str)>) {
    println!("vmmbench: results");
    println!("| guest cmdline | VMM | runs | setup ms | start→/init ms | start→exit ms | teardown ms | VMM peak KiB | exits |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((setting, vmm), samples) in results {
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.failure.is_none()).collect();
        let col = |f: &dyn Fn(&Sample) -> Option<f64>| {
            let xs: Vec<f64> = ok.iter().filter_map(|s| f(s)).collect();
            median(&xs).map_or("-".to_string(), |m| format!("{m:.0}"))
        };
        let failed = samples.len() - ok.len();
        let runs = if failed == 0 {
            samples.len().to_string()
        } else {
            format!("{} ({failed} failed)", samples.len())
        };
        println!(
            "| {setting} | {vmm} | {runs} | {} | {} | {} | {} | {} | {} |",
            col(&setup_ms),
            col(&|s| s.init_ms),
            col(&|s| Some(s.exit_ms)),
            col(&|s| s.teardown_ms()),
            col(&own_peak_kib),
            col(&|s| s.field("kiln-runtime: stats", "exits")),
        );
    }
    println!();
    println!("| ratio (paired, geometric mean, 95 % CI) | value | goal | met |");
    println!("|---|---|---|---|");
    let get = |(setting, vmm): (&str, &str)| results.get(&(setting.to_string(), vmm.to_string()));
    for r in ratios {
        let (Some(a), Some(b)) = (get(r.a), get(r.b)) else {
            continue;
        };
        println!("{}", ratio_line(r, a, b));
    }
    if let Some(kiln) = kiln_peak_of.and_then(get) {
        let peaks: Vec<f64> = kiln
            .iter()
            .filter(|s| s.failure.is_none())
            .filter_map(own_peak_kib)
            .collect();
        if let Some(max) = peaks.iter().copied().reduce(f64::max) {
            println!(
                "| kiln VMM peak beyond guest RAM (`vmm_peak_kib`), largest of {} runs | {max:.0} KiB | ≤ 3072 KiB | {} |",
                peaks.len(),
                if max <= 3072.0 { "yes" } else { "no" }
            );
        }
    }
}

/// The values of `phase` for the pairs where both boots completed, and how
/// many pairs were left out (a failed or missing boot on either side).
pub fn paired(a: &[Sample], b: &[Sample], phase: Phase) -> (Vec<(f64, f64)>, usize) {
    let mut pairs: Vec<usize> = a.iter().chain(b).map(|s| s.pair).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let value = |xs: &[Sample], pair: usize| {
        let s = xs.iter().find(|s| s.pair == pair)?;
        if s.failure.is_some() {
            return None;
        }
        phase.of(s)
    };
    let mut kept = Vec::new();
    let mut left_out = 0;
    for pair in pairs {
        match (value(a, pair), value(b, pair)) {
            (Some(x), Some(y)) => kept.push((x, y)),
            _ => left_out += 1,
        }
    }
    (kept, left_out)
}

fn ratio_line(r: &RatioRow, a: &[Sample], b: &[Sample]) -> String {
    let (pairs, left_out) = paired(a, b, r.phase);
    let goal_text = r.goal.map_or("-".to_string(), |g| format!("≤ {g}"));
    let left = if left_out == 0 {
        String::new()
    } else {
        format!(", {left_out} left out")
    };
    match paired_ratio(&pairs) {
        Some(Ratio {
            ratio,
            low,
            high,
            pairs,
        }) => {
            let met = match r.goal {
                None => "-",
                Some(g) if high <= g => "yes",
                Some(g) if ratio <= g => "yes (interval crosses)",
                Some(_) => "no",
            };
            format!(
                "| {} | {ratio:.3} ({low:.3}–{high:.3}, {pairs} pairs{left}) | {goal_text} | {met} |",
                r.what
            )
        }
        None => format!("| {} | too few pairs{left} | {goal_text} | - |", r.what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(pair: usize, init: f64, failure: Option<&'static str>) -> Sample {
        Sample {
            pair,
            init_ms: Some(init),
            exit_ms: init + 100.0,
            failure,
            ..Sample::default()
        }
    }

    fn row() -> RatioRow {
        RatioRow {
            what: "a / b".into(),
            a: ("s", "a"),
            b: ("s", "b"),
            phase: Phase::Init,
            goal: Some(0.7),
        }
    }

    #[test]
    fn a_failed_boot_leaves_its_pair_out() {
        let a = [
            boot(0, 1.0, None),
            boot(1, 1.0, Some("past its deadline, killed")),
            boot(2, 3.0, None),
        ];
        let b = [boot(0, 2.0, None), boot(1, 2.0, None), boot(2, 6.0, None)];
        let (pairs, left_out) = paired(&a, &b, Phase::Init);
        assert_eq!(pairs, vec![(1.0, 2.0), (3.0, 6.0)]);
        assert_eq!(left_out, 1);
        // Pairing is by pair number, not position: a missing boot shifts
        // nothing.
        let (pairs, left_out) = paired(&a[1..], &b, Phase::Exit);
        assert_eq!(pairs, vec![(103.0, 106.0)]);
        assert_eq!(left_out, 2);
        let line = ratio_line(&row(), &a, &b);
        assert!(
            line.contains("0.500 (0.500–0.500, 2 pairs, 1 left out) | ≤ 0.7 | yes"),
            "{line}"
        );
    }

    #[test]
    fn too_few_complete_pairs_say_so() {
        let a = [boot(0, 1.0, None), boot(1, 1.0, Some("no /init line"))];
        let b = [boot(0, 2.0, None), boot(1, 2.0, None)];
        let line = ratio_line(&row(), &a, &b);
        assert!(line.contains("too few pairs, 1 left out"), "{line}");
    }

    #[test]
    fn own_peak_prefers_the_stats_line() {
        let mut s = Sample {
            hwm_kib: Some(4500),
            ..Sample::default()
        };
        assert_eq!(own_peak_kib(&s), Some(4500.0));
        // ru_maxrss above the harness's size is the VMM's whole-life peak.
        s.rusage_kib = 4700;
        s.harness_kib = 2400;
        assert_eq!(own_peak_kib(&s), Some(4700.0));
        s.output = b"x\nkiln-runtime: stats vm=linux vmm_kib=2000 vmm_peak_kib=2300 notes_held=0\n"
            .to_vec();
        assert_eq!(own_peak_kib(&s), Some(2300.0));
    }
}
