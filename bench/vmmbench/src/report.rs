//! The results table: per setting and VMM the median of each phase, then
//! the ratios the goals of issue #17 are stated in.

use crate::measure::Sample;
use crate::stats::{median, paired_ratio, Ratio};
use std::collections::BTreeMap;

type Results = BTreeMap<(String, String), Vec<Sample>>;

pub fn print(results: &Results) {
    println!("vmmbench: results");
    println!("| guest cmdline | VMM | runs | setup ms | start→/init ms | start→exit ms | teardown ms | VMM peak KiB | exits |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((setting, vmm), samples) in results {
        let col = |f: &dyn Fn(&Sample) -> Option<f64>| {
            let xs: Vec<f64> = samples.iter().filter_map(f).collect();
            median(&xs).map_or("-".to_string(), |m| format!("{m:.0}"))
        };
        println!(
            "| {setting} | {vmm} | {} | {} | {} | {} | {} | {} | {} |",
            samples.len(),
            col(&|s| s
                .setup_ms
                .or_else(|| s.field("kiln-runtime: stats", "setup_ms"))),
            col(&|s| s.init_ms),
            col(&|s| Some(s.exit_ms)),
            col(&|s| s.teardown_ms()),
            col(&|s| Some(s.peak_kib as f64)),
            col(&|s| s.field("kiln-runtime: stats", "exits")),
        );
    }
    println!();
    println!("| ratio (paired, geometric mean, 95 % CI) | value | goal | met |");
    println!("|---|---|---|---|");
    let get = |setting: &str, vmm: &str| results.get(&(setting.to_string(), vmm.to_string()));
    let init = |s: &Sample| s.init_ms;
    let exit = |s: &Sample| Some(s.exit_ms);
    for setting in ["default", "plain"] {
        ratio_row(
            &format!("kiln / QEMU microvm, start→/init, {setting} cmdline"),
            get(setting, "kiln"),
            get(setting, "qemu"),
            init,
            Some(0.7),
        );
    }
    if get("plain", "kiln-before").is_some() {
        ratio_row(
            "kiln, default cmdline / kiln before, plain cmdline (today), start→/init",
            get("default", "kiln"),
            get("plain", "kiln-before"),
            init,
            Some(0.7),
        );
        ratio_row(
            "kiln / kiln before, plain cmdline (the VMM's changes alone), start→/init",
            get("plain", "kiln"),
            get("plain", "kiln-before"),
            init,
            None,
        );
    }
    ratio_row(
        "kiln, default cmdline / plain cmdline, start→/init",
        get("default", "kiln"),
        get("plain", "kiln"),
        init,
        None,
    );
    ratio_row(
        "hello unikernel / Linux guest (default cmdline), start→exit",
        get("hello", "kiln"),
        get("default", "kiln"),
        exit,
        Some(0.05),
    );
    if let Some(kiln) = get("default", "kiln") {
        let peaks: Vec<f64> = kiln.iter().map(|s| s.peak_kib as f64).collect();
        if let Some(max) = peaks.iter().copied().reduce(f64::max) {
            println!(
                "| kiln VMM peak beyond guest RAM, largest of {} runs | {max:.0} KiB | ≤ 3072 KiB | {} |",
                peaks.len(),
                if max <= 3072.0 { "yes" } else { "no" }
            );
        }
    }
}

fn ratio_row(
    what: &str,
    a: Option<&Vec<Sample>>,
    b: Option<&Vec<Sample>>,
    f: impl Fn(&Sample) -> Option<f64>,
    goal: Option<f64>,
) {
    let (Some(a), Some(b)) = (a, b) else { return };
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some((f(x)?, f(y)?)))
        .collect();
    let goal_text = goal.map_or("-".to_string(), |g| format!("≤ {g}"));
    match paired_ratio(&pairs) {
        Some(Ratio {
            ratio,
            low,
            high,
            pairs,
        }) => {
            let met = match goal {
                None => "-",
                Some(g) if high <= g => "yes",
                Some(g) if ratio <= g => "yes (interval crosses)",
                Some(_) => "no",
            };
            println!(
                "| {what} | {ratio:.3} ({low:.3}–{high:.3}, {pairs} pairs) | {goal_text} | {met} |"
            );
        }
        None => println!("| {what} | too few runs | {goal_text} | - |"),
    }
}
