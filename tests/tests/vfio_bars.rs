//! Guest BARs of every kind through VFIO on the emulated target: QEMU's
//! pci-testdev (a 32-bit MMIO BAR, an I/O BAR and, with `membar`, a 64-bit
//! prefetchable BAR) and an edu, passed to the hello unikernel. hello sizes
//! the BARs, runs pci-testdev's test protocol through the MMIO and I/O
//! BARs, and moves each of the three BARs to free space: the device must
//! answer at the new place and the old one must read all-ones.

// kiln-tests is test code throughout: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kiln_tests::{kiln, require_qemu, root, run_with_timeout};
use std::process::Command;
use std::time::Duration;

/// The lines hello prints for the pci-testdev at 00:01.0, in order.
fn testdev_lines() -> Vec<String> {
    let mut checks = vec![
        // Sizing: each kind as it is, the 64-bit BAR as one BAR.
        "bar0 mem32 0xc0000000+0x1000 sized ok".to_string(),
        "bar1 io 0xc000+0x100 sized ok".to_string(),
        "bar2 mem64 0xc1000000+0x1000000 prefetchable sized ok".to_string(),
        "bars restored after sizing ok".to_string(),
    ];
    // The protocol: 16 writes of the data at the offset; the no-eventfd
    // tests count each, QEMU's ioeventfds take the others' writes.
    for (space, kind, first) in [("mem", "mmio", 0), ("io", "portio", 3)] {
        for (i, (test, count)) in [
            ("no-eventfd", 16),
            ("wildcard-eventfd", 0),
            ("datamatch-eventfd", 0),
        ]
        .into_iter()
        .enumerate()
        {
            checks.push(format!(
                "{space} test {} {kind}-{test} 16 writes count {count} ok",
                first + i
            ));
        }
        checks.push(format!("{space} tests 3 ok"));
    }
    checks.extend(
        [
            // A mapped MMIO BAR, a trapped I/O BAR and a 64-bit BAR, moved.
            "bar0 moved 0xc0000000 -> 0xc2100000, test 0 mmio-no-eventfd 16 writes count 16 ok",
            "bar0 old place 0xc0000000 reads 0xffffffff ok",
            "bar1 moved 0xc000 -> 0xc100, test 3 portio-no-eventfd 16 writes count 16 ok",
            "bar1 old place 0xc000 reads 0xffffffff ok",
            "bar2 moved 0xc1000000 -> 0xc3000000, answers ok",
            "bar2 old place 0xc1000000 reads 0xffffffff ok",
        ]
        .map(String::from),
    );
    checks
        .into_iter()
        .map(|c| format!("[pci-testdev] hello: pci-testdev 00:01.0 {c}"))
        .collect()
}

#[test]
fn hello_sizes_drives_and_moves_pci_testdev_bars() {
    require_qemu();
    let d = tempfile::tempdir().expect("tempdir");
    let out = d.path().join("image");
    kiln_tests::images::build(&root().join("images/pci-testdev.toml"), &out);
    let mut cmd = Command::new(kiln());
    cmd.current_dir(d.path()).arg("test").arg(&out);
    let run = run_with_timeout(cmd, Duration::from_secs(600));
    assert!(!run.timed_out, "kiln test hung:\n{}", run.output);
    eprintln!("kiln test pci-testdev: {:.1} s", run.elapsed.as_secs_f64());
    let console = std::fs::read_to_string(out.join("test-console.log")).unwrap_or_default();
    let text = format!("{}\n{console}", run.output);
    assert_eq!(run.status.and_then(|s| s.code()), Some(0), "{text}");

    // Each device in an IOMMU group of its own.
    let groups: Vec<&str> = ["1b36:0005", "1234:11e8"]
        .iter()
        .map(|id| {
            let prefix = format!("kiln: vm pci-testdev: {id} at ");
            kiln_tests::lines(&text)
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|rest| rest.split("(/dev/vfio/").nth(1))
                .unwrap_or_else(|| panic!("{id} not bound:\n{text}"))
        })
        .collect();
    assert_ne!(groups[0], groups[1], "{text}");

    let mut lines = vec![
        "[pci-testdev] hello: pci 00:01.0 1b36:0005 class 00ff00".to_string(),
        "[pci-testdev] hello: pci 00:01.0 bar2 mem64 0xc1000000+0x1000000 prefetchable".to_string(),
    ];
    lines.extend(testdev_lines());
    lines.extend(
        [
            "[pci-testdev] hello: pci-testdev devices 1",
            "[pci-testdev] hello: pci-testdev verdict pass",
            // The edu next to it is driven as ever, after the moves.
            "[pci-testdev] hello: edu 00:02.0 id 0x010000ed ok",
            "[pci-testdev] hello: edu 00:02.0 factorial 5! = 120 ok",
            "[pci-testdev] hello: edu 00:02.0 dma round trip 4096 bytes ok",
            "[pci-testdev] hello: edu 00:02.0 msi vector 0x51 observed ok",
            "[pci-testdev] hello: edu verdict pass",
            "[pci-testdev] hello: exit 0",
            "kiln: appliance done ok=1 failed=0",
        ]
        .map(String::from),
    );
    let mut at = 0;
    let all: Vec<&str> = kiln_tests::lines(&text).collect();
    for line in &lines {
        // In order: the moves come after the protocol ran at the old places.
        let found = all.iter().skip(at).position(|l| l == line);
        let Some(i) = found else {
            panic!("missing {line:?} (in order):\n{text}");
        };
        at += i + 1;
    }
    assert!(!text.contains("FAILED"), "{text}");
}
